"""The insertion task in miniature on 8×8 digits: the layout expert ("a 3", and the coarse
layout of the scene with the object in it) × an inpainter.

Prints, for each method and P = 1, 2, 4 particles per run (the insertion task's sampler
defaults and level schedule, many independent runs, the particle drawn by weight
kept): the known-pixel RMSE against the plate and the masked-pixel RMSE against the object
(raw output, pixel units of [-1, 1]), and the fraction of outputs a logistic-regression
classifier calls the target class (raw, and after pasting the plate back outside the mask
as the task's ``blend`` does), for each class guidance scale of the layout expert (0: the
conditional net alone), then the product's Feynman-Kac log-weight spread per level at P = 2
and 4 (the default case). The classifier's score of the true composites is printed
beside them. See :mod:`benchmarks.miniatures.digits`.
Run: ``.venv/bin/python benchmarks/digits_insertion.py`` (trains both nets on first use,
75-200 s on one thread, cached under the data dir; the rest about 6 minutes).

What it shows (figures: README.md, Measurements, digit insertion miniature, and The
sampling math): P = 1, 2, 4 agree within noise; the product keeps the known pixels best once
the layout expert is guided, and shows the class where the inpainter often draws an 8 or 9;
the naive sum draws the erased half closer to the truth without being a colder draw; each
expert alone also loses RMSE on the product's stochastic transport against its own ODE,
which is the part of the gap a sampler could still close. Raising the layout expert's power
(``--layout-weight``) moves the product towards the object at the known pixels' expense; no
weight or guidance beats the layout expert alone on accuracy and the inpainter alone on
known pixels at once (the layout expert ignores the plate and draws a prototype 3, more
often read as one than the true composites are). The product's log-weights spread by
several nats from the first level and ESS/P stays near 1/P.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from poe_backend.tasks.insertion import InsertionParams  # noqa: E402
from benchmarks.miniatures import digits  # noqa: E402

PARTICLE_COUNTS = (1, 2, 4)
MEASURES = (
    ("known-pixel RMSE (raw)", "known_rmse", 3),
    ("masked-pixel RMSE vs the object (raw)", "masked_rmse", 3),
    ("class accuracy (raw)", "class_accuracy", 2),
    ("class accuracy (blended)", "blended_accuracy", 2),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200, help="independent runs per cell")
    parser.add_argument("--spread-runs", type=int, default=20, help="runs per particle count for the log-weight spread")
    parser.add_argument("--class-guidance", type=float, nargs="+", default=[0.0, 1.0], help="classifier-free guidance scales of the layout expert on the class")
    parser.add_argument("--layout-weight", type=float, default=InsertionParams().depth_weight, help="the layout expert's power (the task's depth_weight)")
    parser.add_argument("--fill-weight", type=float, default=InsertionParams().fill_weight, help="the inpainter's power (the task's fill_weight)")
    parser.add_argument("--particles", type=int, nargs="+", default=list(PARTICLE_COUNTS))
    parser.add_argument("--no-spread", action="store_true", help="skip the log-weight spread")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = digits.load_data()
    experts = digits.train_experts(data)
    case, params = digits.InsertionCase(), InsertionParams(depth_weight=arguments.layout_weight, fill_weight=arguments.fill_weight)
    print(f"nets ready in {time.perf_counter() - start:.0f} s; classifier held-out accuracy {experts.classifier_accuracy:.3f}")
    plates, objects = case.pairs(data, arguments.runs)
    composites = case.composite(plates, objects)
    print(
        f"case: rows {case.mask_rows}, columns {case.mask_columns} of held-out {case.plate_classes} ({case.plates(data).shape[0]} plates) "
        f"regenerated as a {case.target_class}, {arguments.runs} runs per cell"
    )
    print(
        f"classifier on the true composites: {digits.class_accuracy(experts, composites, case.target_class):.2f}, "
        f"on the objects alone {digits.class_accuracy(experts, objects, case.target_class):.2f}"
    )
    print(
        f"settings (the insertion defaults unless given): levels {params.levels}, langevin_steps {params.langevin_steps}, step_scale {params.step_scale}, "
        f"ess_threshold {params.ess_threshold}, t_max {params.t_max}, schedule {params.schedule}; layout weight {params.depth_weight}, fill weight {params.fill_weight}"
    )
    for guidance in arguments.class_guidance:
        guided = dataclasses.replace(case, class_guidance=guidance)
        scores = {
            (method, p): digits.score_method(method, experts, guided, data, particles=p, runs=arguments.runs, seed=arguments.seed, params=params)
            for method in digits.METHODS
            for p in arguments.particles
        }
        for title, attribute, decimals in MEASURES:
            print(f"\n{title + f', class guidance {guidance:g}':<44} | " + " | ".join(f"{'P=' + str(p):>6}" for p in arguments.particles))
            print("-" * (47 + 9 * len(arguments.particles)))
            for method in digits.METHODS:
                print(f"{method:<44} | " + " | ".join(f"{getattr(scores[method, p], attribute):>6.{decimals}f}" for p in arguments.particles))
    for p in () if arguments.no_spread else (2, 4):
        spread = digits.log_weight_spread(experts, case, data, particles=p, runs=arguments.spread_runs, seed=arguments.seed)
        print(f"\nproduct-fkc log-weights, P={p}, {arguments.spread_runs} runs; mean resamplings per run at the defaults: {spread.resample_count:.1f}")
        print(f"{'level':>5} | {'t':>6} | {'std (no resampling)':>19} | {'ESS/P (no resampling)':>21} | {'ESS/P (defaults)':>16}")
        for level, row in enumerate(zip(spread.times, spread.std, spread.ess_fraction, spread.default_ess_fraction), start=2):
            print(f"{level:>5} | {row[0]:>6.3f} | {row[1]:>19.3f} | {row[2]:>21.3f} | {row[3]:>16.3f}")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

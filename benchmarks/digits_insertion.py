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

``--part conditioning`` measures conditional experts instead (the paper's
``p_i(x_i | x_pa(i))`` as an alignment term on the child's velocity,
:class:`~benchmarks.miniatures.digits.ConditioningReading`): the product-fkc method at P = 1
and the insertion defaults, the layout expert guided at ``--cond-guidance``, for every
reading of who is parent and where the child aligns (``--cond-reading``) and every
``--cond-weight``, ``--cond-runs`` runs batched per row (:func:`digits.score_runs`), each
measure ± its bootstrap standard error and its paired difference to the plain product
(w = 0, the same runs and random numbers) ± its error; the single experts for reference;
then the term's pull per unit w by level (:func:`digits.alignment_gain`). Run:
``.venv/bin/python benchmarks/digits_insertion.py --part conditioning`` (2000 runs, three
readings, w = 0.01 ... 1: about 7 minutes on a shared core).

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
several nats from the first level and ESS/P stays near 1/P. Conditioning (guided or not)
improves no measure beyond a few 1e-4 of RMSE at any reading or weight: with the layout
expert the parent and the inpainter aligned over the mask nothing moves up to w = 0.1 but
the known-pixel RMSE (-0.0008), w = 0.3 costs masked RMSE and accuracy and w = 1 breaks the
draw; the other readings cost from w = 0.01-0.03 (over the known pixels) or 0.03 (the
layout expert as the child). The pull per unit w is 1.6-2.5 for the inpainter as the
child and up to 8 for the layout expert (2/t would be 19 at the last level): the draws
break where w·gain passes 1-2, the difference to the parent then growing instead of
shrinking. The child costs three times its forwards (a run's forward-equivalents 183 ->
305 with the inpainter as the child, 427 with the guided layout expert).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from poe_backend.tasks.insertion import InsertionParams  # noqa: E402
from benchmarks.miniatures import digits  # noqa: E402
from benchmarks.miniatures.metrics import bootstrap_standard_error  # noqa: E402

PARTICLE_COUNTS = (1, 2, 4)
MEASURES = (
    ("known-pixel RMSE (raw)", "known_rmse", 3),
    ("masked-pixel RMSE vs the object (raw)", "masked_rmse", 3),
    ("class accuracy (raw)", "class_accuracy", 2),
    ("class accuracy (blended)", "blended_accuracy", 2),
)
READINGS = {reading.name: reading for reading in (digits.ConditioningReading(parent, region) for parent in ("layout", "inpaint") for region in ("mask", "outside", "whole"))}
DEFAULT_READINGS = ("layout>inpaint:mask", "inpaint>layout:mask", "layout>inpaint:whole")
CONDITIONING_WEIGHTS = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)
#: (column, per-run statistic of a RunScores at run indices, decimals): RMSEs pool the runs' squared errors.
CONDITIONING_MEASURES = (
    ("known RMSE", lambda scores, rows: float(np.sqrt(scores.known_mse[rows].mean())), 4),
    ("masked RMSE", lambda scores, rows: float(np.sqrt(scores.masked_mse[rows].mean())), 4),
    ("acc raw", lambda scores, rows: float(scores.correct[rows].mean()), 3),
    ("acc blended", lambda scores, rows: float(scores.blended_correct[rows].mean()), 3),
)


def print_settings(params: InsertionParams) -> None:
    """The sampler settings and the experts' powers."""
    print(
        f"settings (the insertion defaults unless given): levels {params.levels}, langevin_steps {params.langevin_steps}, step_scale {params.step_scale}, "
        f"ess_threshold {params.ess_threshold}, t_max {params.t_max}, schedule {params.schedule}; layout weight {params.depth_weight}, fill weight {params.fill_weight}"
    )


def conditioning_cell(statistic: Callable[[digits.RunScores, np.ndarray], float], scores: digits.RunScores, baseline: digits.RunScores | None, decimals: int) -> str:
    """``value±se`` and, with a ``baseline`` on the same runs, `` Δ±se`` (the paired difference)."""
    rows = np.arange(scores.known_mse.shape[0])
    value = f"{statistic(scores, rows):.{decimals}f}±{bootstrap_standard_error(lambda r: statistic(scores, r), rows.size):.{decimals}f}"
    if baseline is None:
        return value
    difference = lambda r: statistic(scores, r) - statistic(baseline, r)  # noqa: E731
    return f"{value} {difference(rows):+.{decimals}f}±{bootstrap_standard_error(difference, rows.size):.{decimals}f}"


def part_conditioning(arguments: argparse.Namespace, experts: digits.DigitExperts, data: digits.DigitsData, params: InsertionParams) -> None:
    """The conditioning table: one row per single expert, per reading and weight (w = 0 once:
    the plain product, the baseline of every Δ)."""
    case = dataclasses.replace(digits.InsertionCase(), class_guidance=arguments.cond_guidance)
    print_settings(params)
    print(
        f"\n## Conditional experts: product-fkc, P = 1, class guidance {case.class_guidance:g}, {arguments.cond_runs} runs per row (one batched call, seed {arguments.seed}); "
        "value±SE (bootstrap over runs) and Δ±SE vs the plain product on the same runs"
    )
    print(f"   out-of-range: mean fraction of raw pixels beyond ±{digits.OUT_OF_RANGE} or not finite; evals/forwards: one run's expert evaluations and forward-equivalents")
    header = f"{'reading (parent>child:region)':<29} | {'w':>5} | " + " | ".join(f"{title:<26}" for title, _, _ in CONDITIONING_MEASURES)
    print(header + f" | {'out-of-range':>12} | {'evals':>5} | {'fwd':>4} | {'s':>5}")
    print("-" * (len(header) + 39))
    run = lambda method, reading=None: digits.score_runs(method, experts, case, data, runs=arguments.cond_runs, seed=arguments.seed, params=params, reading=reading)  # noqa: E731
    for method in ("layout expert alone", "inpainter alone"):
        print_conditioning_row(method, "-", run(method), None)
    baseline = run("product-fkc")
    print_conditioning_row("plain product", "0", baseline, None)
    for name in arguments.cond_reading:
        for weight in (weight for weight in arguments.cond_weight if weight != 0.0):
            print_conditioning_row(name, f"{weight:g}", run("product-fkc", dataclasses.replace(READINGS[name], weight=weight)), baseline)
    print_alignment_gains(arguments, experts, data, case, params)


def print_alignment_gains(arguments: argparse.Namespace, experts: digits.DigitExperts, data: digits.DigitsData, case: digits.InsertionCase, params: InsertionParams) -> None:
    """The term's pull per unit w (:func:`digits.alignment_gain`, 400 noised composites) at
    every third level and the last one above 0, per reading."""
    levels = digits.task_levels(params)[:-1]
    times = levels[::3] + ([levels[-1]] if (len(levels) - 1) % 3 else [])
    print("\nalignment gain per unit w (median over 400 noised composites; the child's difference to the parent scales by 1 - w·gain; 2/t for reference)")
    print(f"{'reading':<29} | " + " | ".join(f"t={t:.3f}" for t in times))
    print(f"{'2/t':<29} | " + " | ".join(f"{2.0 / t:>7.2f}" for t in times))
    for name in arguments.cond_reading:
        print(f"{name:<29} | " + " | ".join(f"{digits.alignment_gain(experts, case, data, READINGS[name], t, runs=400, seed=arguments.seed):>7.2f}" for t in times), flush=True)


def print_conditioning_row(label: str, weight: str, scores: digits.RunScores, baseline: digits.RunScores | None) -> None:
    """One row of the conditioning table (Δ columns when ``baseline`` is given)."""
    cells = " | ".join(f"{conditioning_cell(statistic, scores, baseline, decimals):<26}" for _, statistic, decimals in CONDITIONING_MEASURES)
    print(f"{label:<29} | {weight:>5} | {cells} | {scores.out_of_range.mean():>12.4f} | {scores.nfe:>5} | {scores.forwards:>4} | {scores.seconds:>5.1f}", flush=True)


def part_methods(arguments: argparse.Namespace, experts: digits.DigitExperts, data: digits.DigitsData, params: InsertionParams) -> None:
    """The methods × particle counts tables and the log-weight spread (the default part)."""
    case = digits.InsertionCase()
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
    print_settings(params)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=("methods", "conditioning"), default="methods", help="methods: the method × P tables and log-weight spread; conditioning: the conditional-expert sweep")
    parser.add_argument("--runs", type=int, default=200, help="independent runs per cell")
    parser.add_argument("--spread-runs", type=int, default=20, help="runs per particle count for the log-weight spread")
    parser.add_argument("--class-guidance", type=float, nargs="+", default=[0.0, 1.0], help="classifier-free guidance scales of the layout expert on the class")
    parser.add_argument("--layout-weight", type=float, default=InsertionParams().depth_weight, help="the layout expert's power (the task's depth_weight)")
    parser.add_argument("--fill-weight", type=float, default=InsertionParams().fill_weight, help="the inpainter's power (the task's fill_weight)")
    parser.add_argument("--particles", type=int, nargs="+", default=list(PARTICLE_COUNTS))
    parser.add_argument("--no-spread", action="store_true", help="skip the log-weight spread")
    parser.add_argument("--cond-weight", type=float, nargs="+", default=list(CONDITIONING_WEIGHTS), help="conditioning part: the alignment weights w")
    parser.add_argument("--cond-reading", nargs="+", choices=sorted(READINGS), default=list(DEFAULT_READINGS), help="conditioning part: parent>child:region")
    parser.add_argument("--cond-runs", type=int, default=2000, help="conditioning part: runs per row")
    parser.add_argument("--cond-guidance", type=float, default=digits.InsertionCase().class_guidance, help="conditioning part: the layout expert's class guidance")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = digits.load_data()
    experts = digits.train_experts(data)
    params = InsertionParams(depth_weight=arguments.layout_weight, fill_weight=arguments.fill_weight)
    print(f"nets ready in {time.perf_counter() - start:.0f} s; classifier held-out accuracy {experts.classifier_accuracy:.3f}")
    (part_conditioning if arguments.part == "conditioning" else part_methods)(arguments, experts, data, params)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

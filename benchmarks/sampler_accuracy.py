"""Sampler accuracy vs cost on products of Gaussian mixtures with exact answers.

Prints one table: for each product, sampler and NFE budget (expert forward passes per
particle per expert: 50, 125, 250, 500), the NFE the run really spent, the sliced
Wasserstein distance to exact samples, the two-sample noise floor and their ratio (1.0 is
as good as exact sampling; ``--runs`` averages over sampler seeds). Each product's first
row, "exact samples", scores fresh exact sets against the same reference set: what a
perfect sampler gets there with as many runs. Each budget gets the most log-SNR levels whose planned cost
(:func:`poe_backend.sampling.budget.planned_nfe`) fits in it. Run (one thread):
``PYTHONPATH=. .venv/bin/python benchmarks/sampler_accuracy.py --particles 2000``.

The ``--runs 8`` table is in README.md, Measurements (analytic products).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from poe_backend.sampling.budget import planned_nfe  # noqa: E402
from poe_backend.sampling.schedules import log_snr_levels  # noqa: E402
from benchmarks.miniatures.metrics import noise_floor, sliced_wasserstein  # noqa: E402
from poe_backend.toy.run import DEFAULT_LANGEVIN_STEPS, run_toy  # noqa: E402
from poe_backend.toy.spec import parse_spec  # noqa: E402
from tests.toy import products  # noqa: E402

PRODUCTS = {
    "2d, 2 experts": products.two_experts_2d(),
    "2d, 3 experts": products.three_experts_2d(),
    "2d, 2 experts x disc": products.with_disc(products.two_experts_2d(), [1.5, 0.0], 1.0),
    "2d, barely overlapping": products.barely_overlapping_2d(),
    "8d, 2 experts": products.two_experts_8d(),
}
BUDGETS = (50, 125, 250, 500)
# (label, run_toy sampler, budget-module sampler, score_only, Langevin steps)
SAMPLERS = [
    ("AIS (energies)", "ais", "ais", False, DEFAULT_LANGEVIN_STEPS),
    ("FKC (score-only)", "fkc", "fkc", True, DEFAULT_LANGEVIN_STEPS),
    ("annealed Langevin (paper)", "langevin", "annealed_langevin", True, DEFAULT_LANGEVIN_STEPS),
    ("naive summed velocity", "naive", "summed_velocity", True, 0),
]


def levels_for_budget(sampler: str, budget: int, num_experts: int, langevin_steps: int, total_weight: float) -> int:
    """The most log-SNR levels whose planned NFE per particle per expert is within ``budget``
    (the Feynman-Kac substeps make the cost non-monotone in the level count, so every count
    up to ``budget + 1`` is tried)."""
    fitting = [
        count
        for count in range(2, budget + 2)
        if planned_nfe(sampler, log_snr_levels(count), num_experts=num_experts, langevin_steps=langevin_steps, total_weight=total_weight) <= budget * num_experts
    ]
    return max(fitting, default=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--particles", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--langevin-steps", type=int, default=DEFAULT_LANGEVIN_STEPS, help="corrector steps per level of the annealed samplers")
    parser.add_argument("--runs", type=int, default=1, help="sampler seeds per row; SWD and ratio are their mean (one run's ratio is noisy even for exact samples: README.md, Measurements)")
    parser.add_argument("--products", nargs="*", default=list(PRODUCTS), help="product names to run (default all)")
    parser.add_argument("--samplers", nargs="*", default=[row[1] for row in SAMPLERS], help="run_toy sampler names (default all)")
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'product':<24} | {'sampler':<26} | {'budget':>6} | {'levels':>6} | {'NFE/expert':>10} | {'SWD':>7} | {'floor':>7} | {'ratio':>6}")
    print("-" * 115)
    for product_name in arguments.products:
        spec = parse_spec(PRODUCTS[product_name])
        generator = torch.Generator().manual_seed(arguments.seed)
        exact = spec.exact_samples(arguments.particles, generator)
        floor = noise_floor(lambda n: spec.exact_samples(n, generator), arguments.particles)
        experts, total_weight = len(spec.mixtures), sum(spec.exponents)
        exact_distance = sum(sliced_wasserstein(spec.exact_samples(arguments.particles, generator), exact) for _ in range(arguments.runs)) / arguments.runs
        print(f"{product_name:<24} | {'exact samples':<26} | {'-':>6} | {'-':>6} | {'-':>10} | {exact_distance:>7.4f} | {floor:>7.4f} | {exact_distance / floor:>6.2f}", flush=True)
        for label, sampler, budget_name, score_only, steps in SAMPLERS:
            if sampler not in arguments.samplers:
                continue
            steps = arguments.langevin_steps if steps else 0
            for budget in BUDGETS:
                levels = levels_for_budget(budget_name, budget, experts, steps, total_weight)
                distances = []
                for offset in range(1, arguments.runs + 1):
                    run = run_toy(spec, num_particles=arguments.particles, seed=arguments.seed + offset, sampler=sampler, num_levels=levels, langevin_steps=steps, score_only=score_only)
                    distances.append(sliced_wasserstein(run.samples, exact))
                distance = sum(distances) / len(distances)
                nfe = run.result.nfe / experts
                print(f"{product_name:<24} | {label:<26} | {budget:>6} | {levels:>6} | {nfe:>10.0f} | {distance:>7.4f} | {floor:>7.4f} | {distance / floor:>6.2f}", flush=True)


if __name__ == "__main__":
    main()

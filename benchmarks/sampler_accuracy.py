"""Sampler accuracy vs cost on products of Gaussian mixtures with exact answers.

Prints one table: for each product and sampler, NFE per particle per expert, the sliced
Wasserstein distance to exact samples, and its ratio to the two-sample noise floor (1.0 is
as good as exact sampling). Run: ``.venv/bin/python benchmarks/sampler_accuracy.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from poe_backend.toy.metrics import noise_floor, sliced_wasserstein  # noqa: E402
from poe_backend.toy.run import run_toy  # noqa: E402
from poe_backend.toy.spec import parse_spec  # noqa: E402
from tests.toy import products  # noqa: E402

PRODUCTS = {
    "2d, 2 experts": products.two_experts_2d(),
    "2d, 3 experts": products.three_experts_2d(),
    "2d, 2 experts x disc": products.with_disc(products.two_experts_2d(), [1.5, 0.0], 1.0),
    "2d, barely overlapping": products.barely_overlapping_2d(),
    "8d, 2 experts": products.two_experts_8d(),
}
# (label, sampler, score_only, levels, langevin steps)
SAMPLERS = [
    ("AIS (energies)", "ais", False, (10, 25, 50, 100), 4),
    ("FKC (score-only)", "fkc", True, (10, 25, 50, 100), 4),
    ("annealed Langevin (paper)", "langevin", True, (10, 25, 50, 100), 4),
    ("naive summed velocity", "naive", True, (50, 125, 250, 500), 0),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--particles", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'product':<24} | {'sampler':<26} | {'NFE/expert':>10} | {'SWD':>7} | {'floor':>7} | {'ratio':>6}")
    print("-" * 95)
    for product_name, data in PRODUCTS.items():
        spec = parse_spec(data)
        generator = torch.Generator().manual_seed(arguments.seed)
        exact = spec.exact_samples(arguments.particles, generator)
        floor = noise_floor(lambda n: spec.exact_samples(n, generator), arguments.particles)
        for label, sampler, score_only, level_counts, steps in SAMPLERS:
            for levels in level_counts:
                run = run_toy(spec, num_particles=arguments.particles, seed=arguments.seed + 1, sampler=sampler, num_levels=levels, langevin_steps=steps, score_only=score_only)
                distance = sliced_wasserstein(run.samples, exact)
                nfe = run.result.nfe / len(spec.mixtures)
                print(f"{product_name:<24} | {label:<26} | {nfe:>10.0f} | {distance:>7.4f} | {floor:>7.4f} | {distance / floor:>6.2f}", flush=True)


if __name__ == "__main__":
    main()

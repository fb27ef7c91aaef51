"""Sampler overhead: time spent outside expert forwards, as a share of the total.

Each expert is a stand-in whose forward costs a fixed time (it spins for ``--forward-ms``,
as the host thread stays busy launching and waiting on a GPU transformer call; sleeping
instead lets the CPU clock down and slows the sampler's next step) and returns a cheap
velocity of the real latent's shape (FLUX 1024² packed latent: 4096 x 64, times the particles). Everything else
— score conversions, weights, resampling, Langevin moves, progress — is the real sampler.
Goal: under 3 %. Run: ``.venv/bin/python benchmarks/sampler_overhead.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from poe_backend.sampling import Factor, GenerativeExpert, ProductOfExperts, samplers  # noqa: E402
from poe_backend.sampling.schedules import log_snr_levels  # noqa: E402


class TimedGaussianExpert(GenerativeExpert):
    """``N(mean, I)`` with an exact velocity that costs ``seconds`` per forward."""

    def __init__(self, mean: Tensor, seconds: float) -> None:
        self.mean, self.seconds, self.busy = mean, seconds, 0.0

    def velocity(self, x: Tensor, t: float) -> Tensor:
        start = time.perf_counter()
        # N(m, I) noised: N((1-t) m, ((1-t)² + t²) I); v = E[eps] - E[x0]
        variance = (1 - t) ** 2 + t**2
        offset = x - (1 - t) * self.mean
        velocity = t * offset / variance - (self.mean + (1 - t) * offset / variance)
        while time.perf_counter() - start < self.seconds:
            pass
        self.busy += time.perf_counter() - start
        return velocity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--forward-ms", type=float, default=50.0, help="cost of one expert forward in ms (a stand-in for a GPU transformer call)")
    parser.add_argument("--particles", type=int, default=4)
    parser.add_argument("--levels", type=int, default=20)
    parser.add_argument("--langevin-steps", type=int, default=2)
    arguments = parser.parse_args()
    shape = (arguments.particles, 4096, 64)
    print(f"latent {shape}, forward {arguments.forward_ms:.0f} ms, {arguments.levels} levels, {arguments.langevin_steps} Langevin steps")
    print(f"{'sampler':<28} | {'experts':>7} | {'NFE':>5} | {'total s':>8} | {'in forwards s':>13} | {'outside':>7}")
    print("-" * 84)
    for name, sampler, options in (
        ("fkc (score-only)", samplers.sample_fkc, {"langevin_steps": arguments.langevin_steps}),
        ("annealed langevin (paper)", samplers.sample_annealed_langevin, {"langevin_steps": arguments.langevin_steps}),
        ("summed velocity (naive)", samplers.sample_summed_velocity, {}),
    ):
        for num_experts in (2, 3):
            generator = torch.Generator().manual_seed(0)
            experts = [TimedGaussianExpert(torch.randn(shape[1:], generator=generator), arguments.forward_ms / 1000) for _ in range(num_experts)]
            product = ProductOfExperts([Factor(expert) for expert in experts])
            noise = torch.randn(shape, generator=generator)
            start = time.perf_counter()
            sampler(product, noise, log_snr_levels(arguments.levels), generator=generator, callback=lambda progress: None, **options)
            total = time.perf_counter() - start
            busy = sum(expert.busy for expert in experts)
            print(f"{name:<28} | {num_experts:>7} | {product.nfe:>5} | {total:>8.2f} | {busy:>13.2f} | {100 * (total - busy) / total:>6.2f}%", flush=True)


if __name__ == "__main__":
    main()

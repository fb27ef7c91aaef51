"""Run a sampler on a toy spec: the one code path behind ``poe-backend toy sample``, the
``toy2d`` task, the figures and the benchmarks."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from poe_backend.families.analytic.gmm import GaussianMixtureExpert
from poe_backend.sampling import Factor, GenerativeExpert, Progress, ProductOfExperts, SampleResult, samplers
from poe_backend.sampling.autoregressive import sample_autoregressive
from poe_backend.sampling.schedules import log_snr_levels
from poe_backend.toy.spec import DTYPE, ToySpec

#: Sampler names for ``--sampler``. "annealed" is the recommended default: exact AIS where
#: every expert has an energy, the score-only Feynman-Kac sampler otherwise.
SAMPLER_NAMES = ("annealed", "ais", "fkc", "langevin", "naive", "single", "autoregressive")
DEFAULT_LEVELS = {"naive": 500, "single": 500, "autoregressive": 40}  # ODE baselines get the NFE the annealed samplers use
DEFAULT_LEVEL_COUNT = 100
AUTOREGRESSIVE_SWEEPS = 3
AUTOREGRESSIVE_GIBBS_T = 0.999  # full re-draw: exact Gibbs on the toy
DEFAULT_LANGEVIN_STEPS = 4


@dataclass
class ToyRun:
    """Equally weighted samples ``(N, D)`` (after a final resampling), the raw weighted
    result, and wall-clock seconds."""

    samples: torch.Tensor
    result: SampleResult
    seconds: float

    def stats(self) -> dict:
        return {**self.result.stats(), "seconds": self.seconds}


def run_toy(
    spec: ToySpec,
    *,
    num_particles: int = 1000,
    seed: int = 0,
    sampler: str = "annealed",
    num_levels: int | None = None,
    langevin_steps: int = DEFAULT_LANGEVIN_STEPS,
    score_only: bool = False,
    callback: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ToyRun:
    """Sample ``spec``'s product with the named sampler (see :data:`SAMPLER_NAMES`;
    ``single:K`` samples expert K alone). ``score_only`` hides the experts' energies."""
    product = product_for(spec, sampler, score_only)
    name = sampler.split(":")[0]
    if name == "annealed":
        name = "ais" if product.has_energy else "fkc"
    if name == "ais" and not product.has_energy:
        raise ValueError("--sampler ais needs energies; drop --score-only or use fkc")
    levels = log_snr_levels(num_levels or DEFAULT_LEVELS.get(name, DEFAULT_LEVEL_COUNT))
    generator = torch.Generator().manual_seed(seed)
    options = {"generator": generator, "callback": callback, "should_stop": should_stop}
    if name == "autoregressive":
        return _run_autoregressive(spec, product, levels, num_particles, langevin_steps, options)
    noise = torch.randn(num_particles, spec.dimension, generator=generator, dtype=DTYPE)
    if name in ("ais", "fkc", "langevin"):
        options["langevin_steps"] = langevin_steps
    function = {
        "ais": samplers.sample_ais,
        "fkc": samplers.sample_fkc,
        "langevin": samplers.sample_annealed_langevin,
        "naive": samplers.sample_summed_velocity,
        "single": samplers.sample_summed_velocity,
    }[name]
    start = time.perf_counter()
    result = function(product, noise, levels, **options)
    samples = result.equally_weighted(generator)
    return ToyRun(samples, result, time.perf_counter() - start)


def _run_autoregressive(spec: ToySpec, product: ProductOfExperts, levels: list[float], num_particles: int, langevin_steps: int, options: dict) -> ToyRun:
    """Chunks are coordinates: chunk j's product is every expert's mixture of coordinate j
    given the coordinates drawn so far (others marginalised); Gibbs sweeps condition on
    all the others, which makes the product of conditionals the exact target conditional."""
    if spec.rewards:
        raise ValueError("--sampler autoregressive: the toy's chunks are coordinates, which a disc reward couples; drop the rewards")
    dimension, generator = spec.dimension, options["generator"]

    def make_product(index: int, chunks: list[torch.Tensor | None]) -> ProductOfExperts:
        known = [j for j, chunk in enumerate(chunks) if chunk is not None]
        values = torch.cat([chunks[j] for j in known], dim=1) if known else None
        factors = [
            Factor(GaussianMixtureExpert(factor.expert.mixture.conditional([index], known, values)), factor.weight)
            for factor in product.factors
        ]
        return ProductOfExperts(factors)

    chunk_noise = [torch.randn(num_particles, 1, generator=generator, dtype=DTYPE) for _ in range(dimension)]
    start = time.perf_counter()
    result = sample_autoregressive(make_product, chunk_noise, levels, langevin_steps=langevin_steps, gibbs_sweeps=AUTOREGRESSIVE_SWEEPS, gibbs_t=AUTOREGRESSIVE_GIBBS_T, **options)
    samples = torch.cat(result.chunks, dim=1)
    weighted = SampleResult(samples, torch.zeros(num_particles, dtype=DTYPE), result.stats()["path"], result.nfe, result.ess)
    return ToyRun(samples, weighted, time.perf_counter() - start)


class _ScoreOnly(GenerativeExpert):
    """Hides an analytic expert's energy so only its velocity is used."""

    passes_per_evaluation = 0

    def __init__(self, expert: GenerativeExpert) -> None:
        self.expert = expert

    def velocity(self, x: torch.Tensor, t: float) -> torch.Tensor:
        return self.expert.velocity(x, t)

    def reindex(self, indices: torch.Tensor) -> None:
        self.expert.reindex(indices)


def product_for(spec: ToySpec, sampler: str, score_only: bool) -> ProductOfExperts:
    """The product ``sampler`` runs on: ``single:K`` expert K alone (ValueError naming the
    count when there is no expert K), else the spec's product; ValueError on an unknown
    sampler name. The toy2d task calls it at submit, so a bad name fails there."""
    product = spec.product()
    if sampler.startswith("single"):
        index = int(sampler.split(":")[1]) if ":" in sampler else 0
        if not 0 <= index < len(product.factors):
            raise ValueError(f"--sampler single:{index}: there are {len(product.factors)} experts")
        product = ProductOfExperts([Factor(product.factors[index].expert)], product.rewards)
    elif sampler.split(":")[0] not in SAMPLER_NAMES:
        raise ValueError(f"--sampler: unknown {sampler!r}; known: {', '.join(SAMPLER_NAMES)}, single:K")
    if score_only:
        product = ProductOfExperts([Factor(_ScoreOnly(f.expert), f.weight) for f in product.factors], product.rewards)
    return product

"""Run a sampler on a toy spec: the one code path behind ``poe-backend toy sample``, the
``toy2d`` task, the figures and the benchmarks."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from poe_backend.sampling import Factor, GenerativeExpert, Progress, ProductOfExperts, SampleResult, samplers
from poe_backend.sampling.schedules import log_snr_levels
from poe_backend.toy.spec import DTYPE, ToySpec

#: Sampler names for ``--sampler``. "annealed" is the recommended default: exact AIS where
#: every expert has an energy, the score-only Feynman-Kac sampler otherwise.
SAMPLER_NAMES = ("annealed", "ais", "fkc", "langevin", "naive", "single")
DEFAULT_LEVELS = {"naive": 500, "single": 500}  # ODE baselines get the NFE the annealed samplers use
DEFAULT_LEVEL_COUNT = 100
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
    product = _product_for(spec, sampler, score_only)
    name = sampler.split(":")[0]
    if name == "annealed":
        name = "ais" if product.has_energy else "fkc"
    if name == "ais" and not product.has_energy:
        raise ValueError("--sampler ais needs energies; drop --score-only or use fkc")
    levels = log_snr_levels(num_levels or DEFAULT_LEVELS.get(name, DEFAULT_LEVEL_COUNT))
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(num_particles, spec.dimension, generator=generator, dtype=DTYPE)
    options = {"generator": generator, "callback": callback, "should_stop": should_stop}
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


class _ScoreOnly(GenerativeExpert):
    """Hides an analytic expert's energy so only its velocity is used."""

    def __init__(self, expert: GenerativeExpert) -> None:
        self.expert = expert

    def velocity(self, x: torch.Tensor, t: float) -> torch.Tensor:
        return self.expert.velocity(x, t)

    def reindex(self, indices: torch.Tensor) -> None:
        self.expert.reindex(indices)


def _product_for(spec: ToySpec, sampler: str, score_only: bool) -> ProductOfExperts:
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

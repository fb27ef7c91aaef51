"""``toy2d``: the sampler core on a product of 2D Gaussian mixtures, through the same task
machinery as the real models (no weights needed). Output: a scatter plot over the experts'
contours (the primary image) and the samples as ``samples.npy``."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from poe_backend.bundle import Bundle
from poe_backend.sampling.budget import planned_autoregressive_nfe, planned_nfe
from poe_backend.sampling.schedules import log_snr_levels
from poe_backend.tasks.base import JobCost, Task, TaskContext, TaskParams, TaskResult, seed_for
from poe_backend.toy import figures
from poe_backend.toy.run import (
    AUTOREGRESSIVE_GIBBS_T, AUTOREGRESSIVE_SWEEPS, DEFAULT_LEVEL_COUNT, DEFAULT_LEVELS, SAMPLER_NAMES, product_for, run_toy,
)
from poe_backend.toy.spec import SpecError, parse_spec

DEFAULT_SPEC: dict[str, Any] = {"experts": figures.EXPERTS, "rewards": [figures.DISC]}


class Toy2DParams(TaskParams):
    """``spec`` follows ``poe_backend/toy/spec.py`` (2 dimensions); ``seed`` overrides the
    bundle's seed when given."""

    spec: dict[str, Any] = Field(default_factory=lambda: DEFAULT_SPEC)
    particles: int = Field(500, ge=1, le=100_000)
    sampler: str = Field("annealed", description=f"one of {', '.join(SAMPLER_NAMES)}, or single:K")
    levels: int | None = Field(None, ge=2, le=10_000)
    langevin_steps: int = Field(4, ge=0, le=100)
    score_only: bool = False
    seed: int | None = None

    @field_validator("spec")
    @classmethod
    def _valid_spec(cls, spec: dict[str, Any]) -> dict[str, Any]:
        try:
            parsed = parse_spec(spec)
        except SpecError as error:
            raise ValueError(str(error)) from None
        if parsed.dimension != 2:
            raise ValueError(f"toy2d needs 2-dimensional experts, got {parsed.dimension}")
        return spec

    @model_validator(mode="after")
    def _known_sampler(self) -> "Toy2DParams":
        """The sampler is checked against the spec at submit (``single:99`` on a 2-expert
        spec used to fail only when the job ran)."""
        try:
            product_for(parse_spec(self.spec), self.sampler, self.score_only)
        except ValueError as error:
            raise ValueError(f"sampler: {error}") from None
        return self


#: run_toy's sampler -> its name in :func:`~poe_backend.sampling.budget.planned_nfe`.
BUDGET_SAMPLERS = {"ais": "ais", "fkc": "fkc", "langevin": "annealed_langevin", "naive": "summed_velocity", "single": "summed_velocity"}


def toy_sampler(sampler: str, has_energy: bool) -> str:
    """The sampler :func:`~poe_backend.toy.run.run_toy` runs for the ``sampler`` parameter:
    ``single:K`` is ``single``, ``annealed`` exact AIS where every expert has an energy
    (``has_energy``), else the Feynman-Kac sampler."""
    name = sampler.split(":")[0]
    if name == "annealed":
        return "ais" if has_energy else "fkc"
    return name


class Toy2DTask(Task):
    name = "toy2d"
    Params = Toy2DParams
    kind = "image"

    def planned_cost(self, bundle: Bundle, params: Toy2DParams) -> JobCost:
        """The evaluations :func:`~poe_backend.toy.run.run_toy` makes (closed-form experts:
        no network forward), for one 2-D point per particle; the autoregressive sampler's
        chunks are the coordinates, re-drawn in its Gibbs sweeps."""
        spec = parse_spec(params.spec)
        product = product_for(spec, params.sampler, params.score_only)
        name = toy_sampler(params.sampler, product.has_energy)
        levels = log_snr_levels(params.levels or DEFAULT_LEVELS.get(name, DEFAULT_LEVEL_COUNT))
        costs = {"num_experts": len(product.factors), "total_weight": float(product.total_weight()), "langevin_steps": params.langevin_steps}
        if name == "autoregressive":
            nfe = planned_autoregressive_nfe("fkc", levels, num_chunks=spec.dimension, gibbs_sweeps=AUTOREGRESSIVE_SWEEPS, gibbs_t=AUTOREGRESSIVE_GIBBS_T, **costs)
        else:
            nfe = planned_nfe(BUDGET_SAMPLERS[name], levels, **costs)
        return JobCost(particles=params.particles, nfe=nfe, forwards=0, tokens=1)

    def run(self, context: TaskContext) -> TaskResult:
        params: Toy2DParams = context.params
        spec = parse_spec(params.spec)
        seed = seed_for(context)
        run = run_toy(
            spec,
            num_particles=params.particles,
            seed=seed,
            sampler=params.sampler,
            num_levels=params.levels,
            langevin_steps=params.langevin_steps,
            score_only=params.score_only,
            callback=context.callback,
            should_stop=context.should_stop,
        )
        samples_path = context.out_dir / "samples.npy"
        np.save(samples_path, run.samples.numpy())
        image_path = figures.scatter_plot(spec, run.samples.numpy(), context.out_dir / "image.png", f"toy2d: {run.result.path}")
        return TaskResult(
            kind="image",
            primary="image",
            outputs={"image": image_path, "samples": samples_path},
            manifest={"task": self.name, "params": params.model_dump(), "seed": seed, "models": "analytic", "stats": run.stats()},
        )

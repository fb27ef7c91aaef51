"""What every sampler shares: its result record, progress reports and cancellation.

Cancellation has one flag and two readers: the samplers get it as ``should_stop`` and check
it after every step (:class:`Observer`); everything else a job does — loading models,
encoding prompts and images, each micro-batch of an expert evaluation, each batch of a
decode — calls :func:`checkpoint`, which reads the flag of the enclosing :func:`stop_scope`
(the server's job process opens one around every task run). Both raise
:class:`SamplingCancelled`, so a cancel takes effect within one such unit of work, not at the
next sampler step (which, before the first step, can be minutes away).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Literal

import torch
from torch import Tensor

from poe_backend.sampling import resampling

if TYPE_CHECKING:
    from poe_backend.sampling.experts import ProductOfExperts

#: How a run's result is picked from its particles (:meth:`SampleResult.chosen_index`).
Selection = Literal["best", "draw"]


class SamplingCancelled(RuntimeError):
    """Raised between steps when the caller's ``should_stop()`` returns True, and at any
    :func:`checkpoint` once the enclosing :func:`stop_scope`'s flag is set."""


#: The cancel flag of the job running in this context (None: outside any job).
_STOP_FLAG: ContextVar[Callable[[], bool] | None] = ContextVar("poe_stop_flag", default=None)


@contextmanager
def stop_scope(should_stop: Callable[[], bool] | None) -> Iterator[None]:
    """Within the block, :func:`checkpoint` raises :class:`SamplingCancelled` once
    ``should_stop()`` returns True (None: never). Scopes nest; the outer one is back after
    the block."""
    token = _STOP_FLAG.set(should_stop)
    try:
        yield
    finally:
        _STOP_FLAG.reset(token)


def checkpoint() -> None:
    """Raise :class:`SamplingCancelled` when the enclosing :func:`stop_scope`'s flag is set;
    a no-op outside a scope. Called at the boundaries of a job's units of work (each model
    load, text encode, micro-batch of an expert evaluation, decode batch), so a cancel waits
    for one such unit at most. Cheap: one call of the flag (a shared-memory read in the
    server's job process)."""
    should_stop = _STOP_FLAG.get()
    if should_stop is not None and should_stop():
        raise SamplingCancelled("cancelled between units of work")


@dataclass(frozen=True)
class Progress:
    """One observed sampler step. ``level`` counts from 1 to ``num_levels``; ``step`` is
    the MCMC step within the level (0 = the MCMC-init/transport step); ``nfe`` is expert
    evaluations so far (per particle, summed over experts); ``forwards`` the network
    forward-equivalents behind them (:attr:`ProductOfExperts.passes`: true CFG makes an
    evaluation two forwards, a conditioning term adds its backward); ``ess`` in [1, P] or
    None; ``particles`` the current x-space particles ``(P, ...)`` (a view: copy to keep);
    ``planned_nfe`` and ``planned_forwards`` the run's whole cost in the same units when the
    caller knows it (:func:`poe_backend.sampling.budget.planned_nfe`), so
    ``forwards / planned_forwards`` is the fraction of the work done."""

    level: int
    num_levels: int
    step: int
    t: float
    nfe: int
    ess: float | None
    particles: Tensor | None = field(default=None, repr=False, compare=False)
    planned_nfe: int | None = None
    forwards: int | None = None
    planned_forwards: int | None = None

    def summary(self) -> dict:
        """JSON-ready fields (without the particles)."""
        return {"level": self.level, "num_levels": self.num_levels, "step": self.step, "t": self.t, "nfe": self.nfe, "planned_nfe": self.planned_nfe,
                "forwards": self.forwards, "planned_forwards": self.planned_forwards, "ess": self.ess}


@dataclass
class SampleResult:
    """Particles ``(P, ...)`` in x-space at t = 0, their log-weights ``(P,)`` (unnormalised;
    all equal after a final resampling) and statistics. ``ancestors[i]`` is the starting
    slot of particle i (resampling copies particles). ``substeps`` counts the extra
    transport evaluations per expert that split wide level gaps (Feynman-Kac only; known
    before a run from :func:`poe_backend.sampling.budget.planned_nfe`). ``forwards``: network
    forward-equivalents (:attr:`Progress.forwards`). ``scores``: every particle's exact
    discriminative score at the end, ``Σ_j log r_j(x)`` ``(P,)``, when the product has
    rewards and the run reached t = 0 (else None)."""

    particles: Tensor
    log_weights: Tensor
    path: str
    nfe: int
    ess_history: list[float] = field(default_factory=list)
    resample_count: int = 0
    ancestors: Tensor | None = None
    acceptance_rate: float | None = None
    substeps: int = 0
    forwards: int = 0
    scores: Tensor | None = None

    def chosen_index(self, seed: int, select: Selection = "draw") -> int:
        """The particle a user gets: ``"best"`` the highest discriminative score (the paper's
        output; needs :attr:`scores`), ``"draw"`` one drawn by weight with ``seed``
        (:func:`resampling.chosen_particle`)."""
        if select == "best":
            if self.scores is None:
                raise ValueError("select='best' needs rewards: this run has no discriminative scores")
            return int(torch.argmax(self.scores.detach().double().cpu()))
        return resampling.chosen_particle(self.log_weights, seed)

    def equally_weighted(self, generator: torch.Generator) -> Tensor:
        """Resample to ``P`` equally weighted particles (systematic)."""
        indices = resampling.systematic(generator, self.log_weights, self.log_weights.numel())
        return self.particles[indices]

    def stats(self) -> dict:
        """A JSON-ready summary."""
        return {
            "path": self.path,
            "nfe_per_particle": self.nfe,
            "final_ess": self.ess_history[-1] if self.ess_history else None,
            "min_ess": min(self.ess_history) if self.ess_history else None,
            "resample_count": self.resample_count,
            "acceptance_rate": self.acceptance_rate,
            "substeps": self.substeps,
            "forwards": self.forwards,
            "scores": None if self.scores is None else [float(value) for value in self.scores.detach().double().cpu()],
        }


@dataclass
class Observer:
    """Reports progress through ``callback`` and raises :class:`SamplingCancelled` when
    ``should_stop()`` turns True; the samplers call :meth:`step` after every step."""

    num_levels: int
    callback: Callable[[Progress], None] | None = None
    should_stop: Callable[[], bool] | None = None

    def step(self, level: int, step: int, t: float, product: "ProductOfExperts", particles: Callable[[], Tensor], log_weights: Tensor | None = None) -> None:
        """Report the product's cost so far; ``particles()`` gives the x-space particles (it
        runs only when there is a callback)."""
        if self.callback is not None:
            ess = None if log_weights is None else resampling.effective_sample_size(log_weights)
            self.callback(Progress(level, self.num_levels, step, t, product.nfe, ess, particles(), forwards=product.passes))
        if self.should_stop is not None and self.should_stop():
            raise SamplingCancelled(f"cancelled at level {level}, step {step}")

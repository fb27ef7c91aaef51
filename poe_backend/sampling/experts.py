"""Expert interfaces and the product of experts the samplers walk.

A *generative* expert is a velocity field ``v(x, t)`` in the rectified-flow convention of
:mod:`poe_backend.sampling.flow`. Analytic experts may also expose the exact log-density of
their noised marginal (an *energy*); only then can a sampler use Metropolis corrections and
exact AIS weights. A *discriminative* expert (reward) scores predicted clean samples.

Target (paper eq. 1): ``p(x) ∝ Π_i p_i(x)^λ_i · Π_j r_j(x)``; level ``t`` of the annealing
path is ``π_t(x) ∝ Π_i p_{i,t}(x)^λ_i`` with score ``Σ_i λ_i s_i(x, t)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from poe_backend.sampling import flow


class GenerativeExpert:
    """A velocity field over particles.

    Subclasses implement :meth:`velocity`. ``x`` has shape ``(P, *event_shape)`` (P
    particles, batched in one forward) and ``t`` is a float in [0, 1]. Analytic experts set
    ``has_energy = True`` and implement :meth:`log_density_and_score`.
    """

    has_energy: bool = False

    def velocity(self, x: Tensor, t: float) -> Tensor:
        """``E[eps - x0 | x_t = x]``, same shape as ``x``."""
        raise NotImplementedError

    def log_density_and_score(self, x: Tensor, t: float) -> tuple[Tensor, Tensor]:
        """Unnormalised ``log p_t(x)`` of shape ``(P,)`` and its gradient (shape of ``x``)."""
        raise NotImplementedError(f"{type(self).__name__} exposes no energy")

    def reindex(self, indices: Tensor) -> None:
        """Follow a resampling of the particles: experts that hold per-particle conditioning
        (``(P, ...)`` tensors, e.g. the history of an autoregressive video) replace it by
        ``conditioning[indices]``. Stateless experts do nothing."""


class Reward:
    """A discriminative expert ``r(x0) >= 0``, evaluated on predicted clean samples.

    :meth:`log_potential` returns the twist used at level ``t``; it must equal the exact
    ``log r(x0)`` at ``t = 0`` and be finite wherever ``r > 0`` is still reachable for
    ``t > 0`` (a tempered or softened reward), so that sequential importance weights stay
    unbiased. Values are ``(P,)`` floats; ``-inf`` means reward zero.
    """

    def log_potential(self, x0: Tensor, t: float) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class Factor:
    """A generative expert raised to the power ``weight`` (a scalar, or a map broadcastable
    to one particle's event shape: regional experts own regions of the latent that way)."""

    expert: GenerativeExpert
    weight: float | Tensor = 1.0


@dataclass
class Evaluation:
    """Everything a sampler needs from one batched evaluation of all experts at ``(x, t)``.

    ``scores[i]`` is expert i's score (unweighted), ``score`` is ``Σ λ_i s_i``,
    ``velocities`` the experts' raw velocities (``None`` when energies were requested
    instead), ``log_density`` the unnormalised ``log π_t`` (``None`` unless energies were
    requested). All in x-space.
    """

    t: float
    x: Tensor
    scores: list[Tensor]
    score: Tensor
    total_weight: float | Tensor
    velocities: list[Tensor] | None = None
    log_density: Tensor | None = None

    @property
    def x0(self) -> Tensor:
        """The λ-weighted mean of the experts' clean predictions, from the product score:
        ``(x + t² S / Σλ) / (1 - t)`` (computed on demand; needs t < 1)."""
        return flow.x0_from_score(self.x, self.t, self.score / self.total_weight)


class ProductOfExperts:
    """``Π_i p_i^λ_i · Π_j r_j`` with a forward counter.

    ``nfe`` counts expert forward passes (each batched over all particles), summed over
    experts, so ``nfe`` is the cost per particle in the paper's sense.
    """

    def __init__(self, factors: Sequence[Factor], rewards: Sequence[Reward] = ()) -> None:
        if not factors:
            raise ValueError("a product needs at least one generative expert")
        self.factors = list(factors)
        self.rewards = list(rewards)
        self.nfe = 0

    @property
    def has_energy(self) -> bool:
        return all(factor.expert.has_energy for factor in self.factors)

    def total_weight(self) -> float | Tensor:
        """``Σ_i λ_i`` (scalar or map): the product of the experts' ``N(0, I)`` top levels
        is ``N(0, I / Σ λ_i)``."""
        return sum(factor.weight for factor in self.factors)

    def evaluate(self, x: Tensor, t: float, *, with_energy: bool = False) -> Evaluation:
        """Call every expert once at ``(x, t)``; ``with_energy`` needs :attr:`has_energy`."""
        scores, velocities, log_density = [], [], None
        for factor in self.factors:
            if with_energy:
                if isinstance(factor.weight, Tensor):
                    raise ValueError("energies need scalar expert weights, not maps")
                log_p, score = factor.expert.log_density_and_score(x, t)
                weighted = factor.weight * log_p
                log_density = weighted if log_density is None else log_density + weighted
            else:
                velocity = factor.expert.velocity(x, t)
                velocities.append(velocity)
                score = flow.score_from_velocity(x, t, velocity) if t > 0.0 else torch.zeros_like(x)
            scores.append(score)
            self.nfe += 1
        return Evaluation(
            t=t,
            x=x,
            scores=scores,
            score=self.weighted_sum(scores),
            total_weight=self.total_weight(),
            velocities=None if with_energy else velocities,
            log_density=log_density,
        )

    def velocities(self, x: Tensor, t: float) -> list[Tensor]:
        """Every expert's velocity at ``(x, t)``, nothing derived (the ODE baselines need no
        scores)."""
        self.nfe += len(self.factors)
        return [factor.expert.velocity(x, t) for factor in self.factors]

    def weighted_sum(self, values: Sequence[Tensor]) -> Tensor:
        """``Σ_i λ_i · values[i]`` (elementwise for map weights); unit weights cost no
        multiplication."""
        total = None
        for factor, value in zip(self.factors, values):
            term = value if isinstance(factor.weight, float | int) and factor.weight == 1 else factor.weight * value
            total = term if total is None else total + term
        return total

    def reindex(self, indices: Tensor) -> None:
        """Tell every expert that particles were resampled (``indices`` of shape ``(P,)``)."""
        for factor in self.factors:
            factor.expert.reindex(indices)

    def twist(self, evaluation: Evaluation) -> Tensor:
        """``log φ_t`` of every particle at an evaluation (its clean prediction is computed
        only when there are rewards)."""
        if not self.rewards:
            return torch.zeros(evaluation.x.shape[0], dtype=evaluation.x.dtype, device=evaluation.x.device)
        return self.log_potential(evaluation.x0, evaluation.t)

    def log_potential(self, x0: Tensor, t: float) -> Tensor:
        """``Σ_j log φ_j(x0, t)``, shape ``(P,)``; zeros when there are no rewards."""
        total = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
        for reward in self.rewards:
            total = total + reward.log_potential(x0, t)
        return total

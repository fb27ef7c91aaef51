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

    ``scores[i]`` is expert i's score (unweighted), ``score`` is ``Σ λ_i s_i``, ``x0`` the
    λ-weighted average of the experts' clean predictions, ``velocities`` the experts' raw
    velocities (``None`` when energies were requested instead), ``log_density`` the
    unnormalised ``log π_t`` (``None`` unless energies were requested). All in x-space.
    """

    t: float
    scores: list[Tensor]
    score: Tensor
    x0: Tensor
    velocities: list[Tensor] | None = None
    log_density: Tensor | None = None


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
        scores, x0s, velocities, log_density = [], [], [], None
        for factor in self.factors:
            if with_energy:
                if isinstance(factor.weight, Tensor):
                    raise ValueError("energies need scalar expert weights, not maps")
                log_p, score = factor.expert.log_density_and_score(x, t)
                weighted = factor.weight * log_p
                log_density = weighted if log_density is None else log_density + weighted
                x0s.append(flow.x0_from_score(x, t, score) if t < 1.0 else torch.zeros_like(x))
            else:
                velocity = factor.expert.velocity(x, t)
                velocities.append(velocity)
                score = flow.score_from_velocity(x, t, velocity) if t > 0.0 else torch.zeros_like(x)
                x0s.append(flow.x0_from_velocity(x, t, velocity))
            scores.append(score)
            self.nfe += 1
        return Evaluation(
            t=t,
            scores=scores,
            score=self.weighted_sum(scores),
            x0=self.weighted_sum(x0s) / self.total_weight(),
            velocities=None if with_energy else velocities,
            log_density=log_density,
        )

    def weighted_sum(self, values: Sequence[Tensor]) -> Tensor:
        """``Σ_i λ_i · values[i]`` (elementwise for map weights)."""
        return sum(factor.weight * value for factor, value in zip(self.factors, values))

    def reindex(self, indices: Tensor) -> None:
        """Tell every expert that particles were resampled (``indices`` of shape ``(P,)``)."""
        for factor in self.factors:
            factor.expert.reindex(indices)

    def log_potential(self, x0: Tensor, t: float) -> Tensor:
        """``Σ_j log φ_j(x0, t)``, shape ``(P,)``; zeros when there are no rewards."""
        total = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
        for reward in self.rewards:
            total = total + reward.log_potential(x0, t)
        return total

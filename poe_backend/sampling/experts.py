"""Expert interfaces and the product of experts the samplers walk.

A *generative* expert is a velocity field ``v(x, t)`` in the rectified-flow convention of
:mod:`poe_backend.sampling.flow`. Analytic experts may also expose the exact log-density of
their noised marginal (an *energy*); only then can a sampler use Metropolis corrections and
exact AIS weights. A *discriminative* expert (reward) scores predicted clean samples.

Target (paper eq. 1): ``p(x) ∝ Π_i p_i(x)^λ_i · Π_j r_j(x)``; level ``t`` of the annealing
path is ``π_t(x) ∝ Π_i p_{i,t}(x)^λ_i`` with score ``Σ_i λ_i s_i(x, t)``.

Conditional experts (the paper's final version): ``p(x) ∝ Π_i p_i(x_i | x_pa(i))``, an expert
conditioned on what its parents generate, approximated for flow experts by an alignment term
on the child's velocity (:class:`Conditioning`, :meth:`GenerativeExpert.aligned_velocity`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from poe_backend.sampling import flow
from poe_backend.sampling.run import checkpoint


class GenerativeExpert:
    """A velocity field over particles.

    Subclasses implement :meth:`velocity`. ``x`` has shape ``(P, *event_shape)`` (P
    particles, batched in one forward) and ``t`` is a float in [0, 1]. Analytic experts set
    ``has_energy = True`` and implement :meth:`log_density_and_score`.
    """

    has_energy: bool = False
    #: Network forward passes one evaluation costs for all particles (true classifier-free
    #: guidance: 2; analytic experts: 0). Progress and the planned cost count them.
    passes_per_evaluation: int = 1
    #: Particles per network call (micro-batches; None: all at once).
    max_batch: int | None = None

    def velocity(self, x: Tensor, t: float) -> Tensor:
        """``E[eps - x0 | x_t = x]``, same shape as ``x``. Must be differentiable in ``x``
        (no ``no_grad`` inside; neural experts freeze their weights instead), so that
        :meth:`aligned_velocity` can take a vector–Jacobian product through it; the product
        calls it under ``torch.no_grad`` otherwise."""
        raise NotImplementedError

    def aligned_velocity(self, x: Tensor, t: float, targets: Sequence[Tensor], region: float | Tensor, weight: float) -> Tensor:
        """The conditional expert's velocity ``v(x) − w ∇_x Σ_p Σ region·(v(x) − v_p)²``
        (``targets`` = the parents' velocities ``v_p``, held fixed: the stop-gradient;
        ``region`` broadcastable to one particle, the part of ``x`` the child generates).

        One vector–Jacobian product through the expert per micro-batch of ``max_batch``
        particles (autograd is on only here, and each micro-batch's graph is freed before the
        next), so it costs a backward pass per forward. Experts whose conditioning holds
        per-particle state must override it (none of the conditioned children does)."""
        aligned = []
        for rows in particle_batches(x.shape[0], self.max_batch):
            with torch.enable_grad():
                leaf = x[rows].detach().requires_grad_(True)
                velocity = self.velocity(leaf, t)
                loss = sum((region * (velocity - target[rows]).square()).sum() for target in targets)
                (gradient,) = torch.autograd.grad(loss, leaf)
            aligned.append(velocity.detach() - weight * gradient)
        return torch.cat(aligned)

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


def particle_batches(count: int, max_batch: int | None) -> Iterator[slice]:
    """Row slices of ``count`` particles in micro-batches of at most ``max_batch`` (None:
    one batch), each handed out after a :func:`~poe_backend.sampling.run.checkpoint`: a
    cancelled job stops between two micro-batches of an evaluation, not after all of them."""
    size = count if not max_batch else max_batch
    for start in range(0, count, size):
        checkpoint()
        yield slice(start, min(start + size, count))


@dataclass(frozen=True)
class Conditioning:
    """Factor ``child`` conditioned on factors ``parents`` (indices into the product's
    factors): its velocity becomes :meth:`GenerativeExpert.aligned_velocity` towards theirs
    with ``weight`` (the paper's ``w``) over ``region`` (1.0: the whole event; a map
    broadcastable to one particle: the part the child generates)."""

    child: int
    parents: tuple[int, ...]
    weight: float
    region: float | Tensor = 1.0


#: Forward-equivalents of one aligned (conditioned) pass beyond its forward: the backward
#: recomputes the checkpointed forward and then takes the input gradient.
BACKWARD_PASSES = 2


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
    """``Π_i p_i^λ_i · Π_j r_j`` with cost counters, and optionally conditional experts.

    ``nfe`` counts expert evaluations (each batched over all particles), summed over
    experts, so ``nfe`` is the cost per particle in the paper's sense. ``passes`` counts
    network forward-equivalents: each evaluation adds its expert's
    :attr:`~GenerativeExpert.passes_per_evaluation` (two with true CFG), and a conditioned
    child ``BACKWARD_PASSES`` more per pass. ``conditioning`` lists the conditional experts;
    parents are evaluated before their children (the links must form no cycle).
    """

    def __init__(self, factors: Sequence[Factor], rewards: Sequence[Reward] = (), conditioning: Sequence[Conditioning] = ()) -> None:
        if not factors:
            raise ValueError("a product needs at least one generative expert")
        self.factors = list(factors)
        self.rewards = list(rewards)
        self.conditioning = {link.child: link for link in conditioning}
        if len(self.conditioning) != len(conditioning):
            raise ValueError("conditioning: one link per child (list all its parents in it)")
        self._order = _evaluation_order(len(self.factors), self.conditioning)
        self.nfe = 0
        self.passes = 0

    def passes_per_round(self) -> int:
        """Forward-equivalents of evaluating every expert once (see the class docstring)."""
        return sum(factor.expert.passes_per_evaluation * (1 + BACKWARD_PASSES * (index in self.conditioning)) for index, factor in enumerate(self.factors))

    @property
    def has_energy(self) -> bool:
        return all(factor.expert.has_energy for factor in self.factors)

    def total_weight(self) -> float | Tensor:
        """``Σ_i λ_i`` (scalar or map): the product of the experts' ``N(0, I)`` top levels
        is ``N(0, I / Σ λ_i)``."""
        return sum(factor.weight for factor in self.factors)

    def evaluate(self, x: Tensor, t: float, *, with_energy: bool = False) -> Evaluation:
        """Call every expert once at ``(x, t)``; ``with_energy`` needs :attr:`has_energy` (and
        no conditioning)."""
        scores, velocities, log_density = [], None, None
        if with_energy:
            if self.conditioning:
                raise ValueError("conditional experts have no energy; use a score-only sampler")
            for factor in self.factors:
                if isinstance(factor.weight, Tensor):
                    raise ValueError("energies need scalar expert weights, not maps")
                log_p, score = factor.expert.log_density_and_score(x, t)
                weighted = factor.weight * log_p
                log_density = weighted if log_density is None else log_density + weighted
                scores.append(score)
            self.nfe += len(self.factors)
        else:
            velocities = self.velocities(x, t)
            scores = [flow.score_from_velocity(x, t, velocity) if t > 0.0 else torch.zeros_like(x) for velocity in velocities]
        return Evaluation(
            t=t,
            x=x,
            scores=scores,
            score=self.weighted_sum(scores),
            total_weight=self.total_weight(),
            velocities=velocities,
            log_density=log_density,
        )

    def velocities(self, x: Tensor, t: float) -> list[Tensor]:
        """Every expert's velocity at ``(x, t)`` in factor order, parents before their
        conditioned children (whose velocities are aligned to the parents'); nothing
        derived (the ODE baselines need no scores)."""
        velocities: list[Tensor | None] = [None] * len(self.factors)
        for index in self._order:
            expert, link = self.factors[index].expert, self.conditioning.get(index)
            if link is None:
                with torch.no_grad():
                    velocities[index] = expert.velocity(x, t)
            else:
                velocities[index] = expert.aligned_velocity(x, t, [velocities[parent] for parent in link.parents], link.region, link.weight)
        self.nfe += len(self.factors)
        self.passes += self.passes_per_round()
        return velocities

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


def _evaluation_order(count: int, conditioning: dict[int, Conditioning]) -> list[int]:
    """Factor indices with every parent before its children (depth-first); ValueError on an
    unknown index or a cycle."""
    order: list[int] = []
    state: dict[int, str] = {}

    def visit(index: int, path: tuple[int, ...]) -> None:
        if not 0 <= index < count:
            raise ValueError(f"conditioning: no factor {index} (the product has {count})")
        if state.get(index) == "done":
            return
        if index in path:
            raise ValueError(f"conditioning: cycle through factors {path + (index,)}")
        link = conditioning.get(index)
        for parent in () if link is None else link.parents:
            visit(parent, path + (index,))
        state[index] = "done"
        order.append(index)

    for index in list(conditioning) + list(range(count)):
        visit(index, ())
    return order

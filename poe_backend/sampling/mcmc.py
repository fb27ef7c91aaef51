"""Langevin kernels on a product's level: unadjusted (ULA) and Metropolis-adjusted (MALA),
the latter with energies or, score-only, with the trapezoid rule for the energy difference.

Step size ``η`` is in the units of the space walked (x or y), a scalar or a map
broadcastable to ``x``; the samplers scale it with the level's noise (``η = α · t²`` in
x-space, ``α · σ²`` in y-space).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from poe_backend.sampling import flow


@dataclass
class EnergyState:
    """A particle batch with its cached unnormalised log-density ``(P,)`` and score."""

    x: Tensor
    log_density: Tensor
    score: Tensor


def ula_step(x: Tensor, score: Tensor, step_size: float | Tensor, noise: Tensor) -> Tensor:
    """``x + η · s + sqrt(2η) · z``; ``η`` a scalar or a map broadcastable to ``x``."""
    return x + step_size * score + torch.sqrt(torch.as_tensor(2.0 * step_size, dtype=x.dtype, device=x.device)) * noise


def _log_proposal(to: Tensor, start: Tensor, start_score: Tensor, step_size: float | Tensor) -> Tensor:
    """``log q(to | start)`` of the Langevin proposal, up to a constant, shape ``(P,)``."""
    return -flow.batch_sum((to - start - step_size * start_score) ** 2 / (4.0 * step_size))


def score_only_log_ratio(x: Tensor, score: Tensor, proposal: Tensor, proposal_score: Tensor, step_size: float | Tensor) -> Tensor:
    """Log Metropolis-Hastings ratio ``(P,)`` of the Langevin move ``x -> proposal`` from
    scores alone: ``log π(x') - log π(x)`` is the line integral of the score, taken by the
    trapezoid rule ``½ (s(x) + s(x'))·(x' - x)``, plus the proposal densities' ratio.

    Exact for Gaussian targets (a linear score), so the move then leaves the target
    exactly invariant, which ULA does not (on ``N(0, v)`` ULA's stationary variance is
    ``v / (1 - η / 2v)``). Otherwise the error is third order in the move. Costs no forward
    beyond the proposal's, which the next move needs anyway (Sjöberg et al. 2023,
    "MCMC-correction of score-based diffusion models for model composition")."""
    energy_difference = flow.batch_sum(0.5 * (score + proposal_score) * (proposal - x))
    return energy_difference + _log_proposal(x, proposal, proposal_score, step_size) - _log_proposal(proposal, x, score, step_size)


def mala_step(
    generator: torch.Generator,
    state: EnergyState,
    step_size: float,
    evaluate: Callable[[Tensor], EnergyState],
) -> tuple[EnergyState, Tensor]:
    """One MALA move per particle; returns the new state and the accepted mask ``(P,)``.

    ``evaluate(x)`` gives the state of a proposal (one forward per expert).
    """
    noise = flow.standard_normal_like(state.x, generator)
    proposal = evaluate(ula_step(state.x, state.score, step_size, noise))
    log_ratio = (
        proposal.log_density
        - state.log_density
        + _log_proposal(state.x, proposal.x, proposal.score, step_size)
        - _log_proposal(proposal.x, state.x, state.score, step_size)
    )
    uniform = flow.uniform_like(log_ratio, generator)
    accepted = torch.log(uniform) < log_ratio
    return _select(accepted, proposal, state), accepted


def _select(mask: Tensor, chosen: EnergyState, other: EnergyState) -> EnergyState:
    expand = mask.view(-1, *([1] * (chosen.x.dim() - 1)))
    return EnergyState(
        x=torch.where(expand, chosen.x, other.x),
        log_density=torch.where(mask, chosen.log_density, other.log_density),
        score=torch.where(expand, chosen.score, other.score),
    )

"""Linear-annealing samplers for a product of experts (DESIGN.md section 2).

Every sampler has one signature, as in k-diffusion::

    sample_x(product, noise, levels, *, generator, callback=None, should_stop=None, ...)

``noise`` is standard normal of shape ``(P, *event_shape)``; the sampler scales it to its
start distribution (the product of the experts' top levels, ``N(0, t_max² / Σλ)`` in
x-space). ``levels`` is a decreasing list of times ending at 0 (see ``schedules``). Every
expert forward is batched over the P particles.

* :func:`sample_ais` — the energy path: exact AIS (Neal 2001) along ``π_t ∝ Π p_{i,t}^λ_i``
  with MALA moves; asymptotically exact. Needs every expert's energy.
* :func:`sample_fkc` — the score-only path: variance-exploding SDE transport weighted by
  Feynman-Kac corrector weights for products (Skreta et al. 2025), Langevin correctors.
* :func:`sample_annealed_langevin` — the paper's algorithm as published: MCMC init (a
  DDIM-style step with the experts' averaged clean prediction) then unadjusted Langevin,
  resampling by rewards only. Biased in mode weights; kept as the paper's baseline.
* :func:`sample_summed_velocity` — the naive baseline: Euler steps of the ODE of the summed
  velocities ``Σ λ_i v_i`` (with one expert, that expert's own flow sampler).

Rewards enter as twists: particles carry base weights that stay proper for ``π_t``;
resampling uses base weight + ``log φ_t(x0_hat)``, after which the base weight becomes
``-log φ_t``; the final weights add the exact ``log r(x)`` at t = 0.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from poe_backend.sampling import flow, mcmc, resampling
from poe_backend.sampling.experts import Evaluation, ProductOfExperts
from poe_backend.sampling.run import Observer, Progress, SampleResult

Callback = Callable[[Progress], None] | None
StopFlag = Callable[[], bool] | None

TARGET_ACCEPTANCE = 0.574  # optimal MALA acceptance (Roberts & Rosenthal 1998)


def sample_ais(
    product: ProductOfExperts,
    noise: Tensor,
    levels: list[float],
    *,
    generator: torch.Generator,
    langevin_steps: int = 4,
    step_scale: float = 0.5,
    ess_threshold: float = 0.5,
    callback: Callback = None,
    should_stop: StopFlag = None,
) -> SampleResult:
    """Annealed importance sampling with MALA moves; every expert must expose an energy.

    Per level: reweight by ``log π_k(x) - log π_{k-1}(x)``, resample (twisted by rewards)
    when the ESS falls below ``ess_threshold · P``, then ``langevin_steps`` MALA moves whose
    step size starts at ``step_scale · t_max² / Σλ`` and adapts towards 57 % acceptance.
    NFE per expert: ``len(levels) · (1 + langevin_steps)``.
    """
    if not product.has_energy:
        raise ValueError("sample_ais needs every expert to expose an energy; use sample_fkc")
    observer, tracker = Observer(len(levels), callback, should_stop), _Tracker(noise.shape[0])
    start_std = levels[0] / math.sqrt(product.total_weight())
    state = mcmc.EnergyState(noise * start_std, torch.zeros(noise.shape[0]), torch.zeros_like(noise))
    log_weights = flow.batch_sum(state.x**2) / (2 * start_std**2)  # -log N(x; 0, std²) + const
    step_size = step_scale * start_std**2
    for level, t in enumerate(levels, start=1):
        previous_log_density = state.log_density if level > 1 else 0.0
        state = _energy_state(product, state.x, t)
        log_weights = log_weights + state.log_density - previous_log_density
        x0 = _clean_prediction(product, state.x, t, state.score)
        indices, log_weights = tracker.resample(generator, product, log_weights, x0, t, ess_threshold)
        if indices is not None:
            state = mcmc.EnergyState(state.x[indices], state.log_density[indices], state.score[indices])
        observer.step(level, 0, t, product.nfe, state.x, log_weights)
        for step in range(1, langevin_steps + 1):
            state, accepted = mcmc.mala_step(generator, state, step_size, lambda x: _energy_state(product, x, t))
            step_size *= math.exp(tracker.record_acceptance(accepted) - TARGET_ACCEPTANCE)
            observer.step(level, step, t, product.nfe, state.x, log_weights)
    return tracker.finish(product, state.x, log_weights, "ais (energies, MALA)")


def sample_fkc(
    product: ProductOfExperts,
    noise: Tensor,
    levels: list[float],
    *,
    generator: torch.Generator,
    langevin_steps: int = 4,
    step_scale: float = 0.5,
    ess_threshold: float = 0.5,
    start: Tensor | None = None,
    callback: Callback = None,
    should_stop: StopFlag = None,
) -> SampleResult:
    """Score-only annealing with Feynman-Kac corrector weights for products.

    In ``y = x / (1 - t)``, ``σ = t / (1 - t)``, from ``σ_k`` to ``σ_{k+1}`` with
    ``Δu = σ_k² - σ_{k+1}²``: ``y ← y + Δu·S + sqrt(Δu)·z`` with ``S = Σ λ_i s_i`` and
    ``log w += ½ Δu (‖S‖² - Σ λ_i ‖s_i‖²)`` (scores in y-space). Resample on low ESS, then
    ``langevin_steps`` ULA correctors with ``η = step_scale · σ² / Σλ``. ``start`` (x-space,
    at ``levels[0]``) replaces the Gaussian start, e.g. a re-noised sample for a Gibbs sweep.
    NFE per expert: ``1 + (len(levels) - 1) · (1 + langevin_steps)``.
    """
    observer, tracker = Observer(len(levels), callback, should_stop), _Tracker(noise.shape[0])
    y = _initial_y(product, noise, levels[0], start)
    log_weights = torch.zeros(noise.shape[0], dtype=noise.dtype, device=noise.device)
    evaluation = product.evaluate(flow.x_from_y(y, levels[0]), levels[0])
    for level, (t, t_next) in enumerate(zip(levels[:-1], levels[1:]), start=2):
        delta_u = flow.sigma_from_t(t) ** 2 - flow.sigma_from_t(t_next) ** 2
        scores = [(1.0 - t) * score for score in evaluation.scores]
        total_score = (1.0 - t) * evaluation.score
        squared = product.weighted_sum([score**2 for score in scores])
        log_weights = log_weights + 0.5 * delta_u * flow.batch_sum(total_score**2 - squared)
        y = y + delta_u * total_score + math.sqrt(delta_u) * flow.standard_normal_like(y, generator)
        evaluation = product.evaluate(flow.x_from_y(y, t_next), t_next)
        indices, log_weights = tracker.resample(generator, product, log_weights, evaluation.x0, t_next, ess_threshold)
        if indices is not None:
            y, evaluation = y[indices], _index_evaluation(evaluation, indices)
        observer.step(level, 0, t_next, product.nfe, flow.x_from_y(y, t_next), log_weights)
        y, evaluation = _langevin_correctors(product, y, evaluation, langevin_steps, step_scale, generator, observer, level, log_weights)
    return tracker.finish(product, flow.x_from_y(y, levels[-1]), log_weights, "fkc (score-only, Feynman-Kac weights)")


def sample_annealed_langevin(
    product: ProductOfExperts,
    noise: Tensor,
    levels: list[float],
    *,
    generator: torch.Generator,
    langevin_steps: int = 4,
    step_scale: float = 0.5,
    start: Tensor | None = None,
    callback: Callback = None,
    should_stop: StopFlag = None,
) -> SampleResult:
    """The paper's annealed sampler: per level an MCMC-init step (DDIM-style,
    ``y' = x0_hat + (σ'/σ)(y - x0_hat)``, stable even for a handful of levels),
    ``langevin_steps`` ULA steps, then resampling by the rewards' potentials alone (every
    level, when there are rewards). No transport weights. ``start`` as in :func:`sample_fkc`."""
    observer, tracker = Observer(len(levels), callback, should_stop), _Tracker(noise.shape[0])
    y = _initial_y(product, noise, levels[0], start)
    evaluation = product.evaluate(flow.x_from_y(y, levels[0]), levels[0])
    for level, (t, t_next) in enumerate(zip(levels[:-1], levels[1:]), start=2):
        y = evaluation.x0 + (flow.sigma_from_t(t_next) / flow.sigma_from_t(t)) * (y - evaluation.x0)
        evaluation = product.evaluate(flow.x_from_y(y, t_next), t_next)
        observer.step(level, 0, t_next, product.nfe, flow.x_from_y(y, t_next))
        y, evaluation = _langevin_correctors(product, y, evaluation, langevin_steps, step_scale, generator, observer, level, None)
        if product.rewards and t_next > 0.0:
            log_potential = product.log_potential(evaluation.x0, t_next)
            indices = resampling.systematic(generator, log_potential, log_potential.numel())
            y, evaluation = y[indices], _index_evaluation(evaluation, indices)
            tracker.record_resampling(product, indices)
    log_weights = torch.zeros(noise.shape[0], dtype=noise.dtype, device=noise.device)
    return tracker.finish(product, flow.x_from_y(y, levels[-1]), log_weights, "annealed langevin (paper, unweighted)")


def sample_summed_velocity(
    product: ProductOfExperts,
    noise: Tensor,
    levels: list[float],
    *,
    generator: torch.Generator,
    start: Tensor | None = None,
    callback: Callback = None,
    should_stop: StopFlag = None,
) -> SampleResult:
    """Euler steps of ``dx/dt = Σ λ_i v_i(x, t)`` from ``x = t_max · noise`` (or ``start``)
    — the naive composition, which samples the wrong distribution for a product; with one
    expert it is that expert's own flow sampler. Rewards only weight the final particles.
    NFE per expert: ``len(levels) - 1``."""
    observer, tracker = Observer(len(levels), callback, should_stop), _Tracker(noise.shape[0])
    x = noise * levels[0] if start is None else start
    for level, (t, t_next) in enumerate(zip(levels[:-1], levels[1:]), start=2):
        x = x + (t_next - t) * product.weighted_sum(product.evaluate(x, t).velocities)
        observer.step(level, 0, t_next, product.nfe, x)
    log_weights = torch.zeros(noise.shape[0], dtype=noise.dtype, device=noise.device)
    return tracker.finish(product, x, log_weights, "summed-velocity ODE (naive)")


def _initial_y(product: ProductOfExperts, noise: Tensor, t: float, start: Tensor | None) -> Tensor:
    """y-space start at level t: the product of the experts' top levels,
    ``N(0, σ² / Σλ)``, or the given x-space ``start``."""
    if start is not None:
        return flow.y_from_x(start, t)
    return noise * flow.sigma_from_t(t) / torch.sqrt(torch.as_tensor(product.total_weight(), dtype=noise.dtype))


def _langevin_correctors(
    product: ProductOfExperts,
    y: Tensor,
    evaluation: Evaluation,
    num_steps: int,
    step_scale: float,
    generator: torch.Generator,
    observer: Observer,
    level: int,
    log_weights: Tensor | None,
) -> tuple[Tensor, Evaluation]:
    """ULA in y-space at the evaluation's level with ``η = step_scale · σ² / Σλ``; none at
    t = 0 (the step would be zero)."""
    t = evaluation.t
    if t <= 0.0:
        return y, evaluation
    step_size = step_scale * flow.sigma_from_t(t) ** 2 / product.total_weight()
    for step in range(1, num_steps + 1):
        y = mcmc.ula_step(y, (1.0 - t) * evaluation.score, step_size, flow.standard_normal_like(y, generator))
        evaluation = product.evaluate(flow.x_from_y(y, t), t)
        observer.step(level, step, t, product.nfe, flow.x_from_y(y, t), log_weights)
    return y, evaluation


def _energy_state(product: ProductOfExperts, x: Tensor, t: float) -> mcmc.EnergyState:
    evaluation = product.evaluate(x, t, with_energy=True)
    return mcmc.EnergyState(x, evaluation.log_density, evaluation.score)


def _clean_prediction(product: ProductOfExperts, x: Tensor, t: float, score: Tensor) -> Tensor:
    """The λ-weighted mean of the experts' Tweedie predictions, from the product score:
    ``(x + t² S / Σλ) / (1 - t)``."""
    return flow.x0_from_score(x, t, score / product.total_weight())


def _index_evaluation(evaluation: Evaluation, indices: Tensor) -> Evaluation:
    return Evaluation(
        t=evaluation.t,
        scores=[score[indices] for score in evaluation.scores],
        score=evaluation.score[indices],
        x0=evaluation.x0[indices],
        log_density=None if evaluation.log_density is None else evaluation.log_density[indices],
    )


class _Tracker:
    """Resampling decisions and the statistics a :class:`SampleResult` reports."""

    def __init__(self, num_particles: int) -> None:
        self.ess_history: list[float] = []
        self.resample_count = 0
        self.acceptances: list[float] = []
        self.ancestors = torch.arange(num_particles)

    def record_resampling(self, product: ProductOfExperts, indices: Tensor) -> None:
        """Count a resampling, follow each particle's origin and tell the experts."""
        self.resample_count += 1
        self.ancestors = self.ancestors[indices.cpu()]
        product.reindex(indices)

    def resample(
        self,
        generator: torch.Generator,
        product: ProductOfExperts,
        log_weights: Tensor,
        x0: Tensor,
        t: float,
        ess_threshold: float,
    ) -> tuple[Tensor | None, Tensor]:
        """Twisted resampling when the ESS of ``log_weights + log φ_t(x0)`` is below
        ``ess_threshold · P``. Returns the chosen indices (None if no resampling) and the
        base log-weights afterwards (``-log φ_t`` of the survivors, or unchanged)."""
        log_potential = product.log_potential(x0, t)
        twisted = log_weights + log_potential
        ess = resampling.effective_sample_size(twisted)
        self.ess_history.append(ess)
        if ess >= ess_threshold * twisted.numel():
            return None, log_weights
        indices = resampling.systematic(generator, twisted, twisted.numel())
        self.record_resampling(product, indices)
        return indices, -log_potential[indices]

    def record_acceptance(self, accepted: Tensor) -> float:
        rate = float(accepted.double().mean())
        self.acceptances.append(rate)
        return rate

    def finish(self, product: ProductOfExperts, x: Tensor, log_weights: Tensor, path: str) -> SampleResult:
        """Add the exact rewards at t = 0 and package the result."""
        log_weights = log_weights + product.log_potential(x, 0.0)
        self.ess_history.append(resampling.effective_sample_size(log_weights))
        return SampleResult(
            particles=x,
            log_weights=log_weights,
            path=path,
            nfe=product.nfe,
            ess_history=self.ess_history,
            resample_count=self.resample_count,
            ancestors=self.ancestors,
            acceptance_rate=sum(self.acceptances) / len(self.acceptances) if self.acceptances else None,
        )

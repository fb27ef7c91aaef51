"""Linear-annealing samplers for a product of experts (DESIGN.md section 2).

Every sampler has one signature, as in k-diffusion::

    sample_x(product, noise, levels, *, generator, callback=None, should_stop=None, ...)

``noise`` is standard normal of shape ``(P, *event_shape)``; the sampler scales it to its
start distribution (the product of the experts' top levels, ``N(0, t_max² / Σλ)`` in
x-space). ``levels`` is a decreasing list of times in [0, 1) ending at 0 (see
``schedules``). Every expert forward is batched over the P particles.

* :func:`sample_ais` — the energy path: exact SMC/AIS (Neal 2001) along
  ``γ_t = π_t · φ_t`` with MALA moves; asymptotically exact. Needs every expert's energy.
* :func:`sample_fkc` — the score-only path: variance-exploding SDE transport weighted by
  Feynman-Kac corrector weights for products (Skreta et al. 2025), Langevin correctors.
* :func:`sample_annealed_langevin` — the paper's algorithm as published: MCMC init (a
  DDIM-style step with the experts' averaged clean prediction) then unadjusted Langevin,
  resampling by rewards only. Biased in mode weights; kept as the paper's baseline.
* :func:`sample_summed_velocity` — the naive baseline: Euler steps of the ODE of the summed
  velocities ``Σ λ_i v_i`` (with one expert, that expert's own flow sampler).

Rewards enter the weighted samplers as twists: the level-t target is ``γ_t = π_t · φ_t``
with ``φ_t = Π_j exp(log_potential_j(x0_hat, t))``, which equals the exact reward at t = 0.
Weights track ``γ`` (the twist ratio is part of each increment), moves target ``γ`` (MALA
accepts on it; Langevin correctors add a Metropolis step on the twist ratio, exact for a
reversible base move), so particles stay where the reward is as it sharpens.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch
from torch import Tensor

from poe_backend.sampling import flow, mcmc, resampling
from poe_backend.sampling.experts import Evaluation, ProductOfExperts
from poe_backend.sampling.run import Observer, Progress, SampleResult

Callback = Callable[[Progress], None] | None
Transport = Literal["euler", "exponential"]
StopFlag = Callable[[], bool] | None

TARGET_ACCEPTANCE = 0.574  # optimal MALA acceptance (Roberts & Rosenthal 1998)
STABLE_TRANSPORT = 1.0  # largest Σλ · (1 - σ'²/σ²) of one Euler-Maruyama transport step


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
    """Annealed importance sampling with resampling and MALA moves; every expert must expose
    an energy.

    Per level: reweight by ``log γ_k(x) - log γ_{k-1}(x)``, resample when the ESS falls
    below ``ess_threshold · P``, then ``langevin_steps`` MALA moves on ``γ_k`` whose step
    size starts at ``step_scale · t_max² / Σλ`` and adapts towards 57 % acceptance.
    NFE per expert: ``len(levels) · (1 + langevin_steps)``.
    """
    if not product.has_energy:
        raise ValueError("sample_ais needs every expert to expose an energy; use sample_fkc")
    observer, tracker = Observer(len(levels), callback, should_stop), _Tracker(noise.shape[0])
    start_std = levels[0] / math.sqrt(product.total_weight())
    x = noise * start_std
    log_weights = flow.batch_sum(x**2) / (2 * start_std**2)  # -log N(x; 0, std²) + const
    step_size, previous = step_scale * start_std**2, None
    for level, t in enumerate(levels, start=1):
        state = _twisted_energy_state(product, x, t)
        log_weights = log_weights + state.log_density - (0.0 if previous is None else previous)
        state, log_weights = tracker.maybe_resample(generator, product, log_weights, ess_threshold, state, _index_energy_state)
        observer.step(level, 0, t, product, lambda: state.x, log_weights)
        for step in range(1, langevin_steps + 1):
            state, accepted = mcmc.mala_step(generator, state, step_size, lambda z: _twisted_energy_state(product, z, t))
            step_size *= math.exp(tracker.record_acceptance(accepted) - TARGET_ACCEPTANCE)
            observer.step(level, step, t, product, lambda: state.x, log_weights)
        x, previous = state.x, state.log_density
    return tracker.finish(product, state.x, log_weights, "ais (energies, MALA)")


def sample_fkc(
    product: ProductOfExperts,
    noise: Tensor,
    levels: list[float],
    *,
    generator: torch.Generator,
    langevin_steps: int = 4,
    step_scale: float = 1.0,
    ess_threshold: float = 0.5,
    metropolis: bool = True,
    transport: Transport = "euler",
    fk_scale: float = 1.0,
    start: Tensor | None = None,
    callback: Callback = None,
    should_stop: StopFlag = None,
) -> SampleResult:
    """Score-only annealing with Feynman-Kac corrector weights for products.

    In ``y = x / (1 - t)``, ``σ = t / (1 - t)``, from ``σ_k`` to ``σ_{k+1}`` with
    ``Δu = σ_k² - σ_{k+1}²``: ``y ← y + Δu·S + sqrt(Δu)·z`` with ``S = Σ λ_i s_i`` and
    ``log w += ½ Δu (‖S‖² - Σ λ_i ‖s_i‖²)`` (scores in y-space), plus the twist ratio.
    ``transport`` "euler" takes that step as written; a level gap too wide for it
    (``Σλ (1 - σ'²/σ²) > 1``: the step would flip signs) is split into geometric substeps,
    each one more evaluation. "exponential" solves the step exactly for clean predictions
    held fixed (:func:`_transport_step`): no substeps, so a run costs what its levels say,
    but biased: holding ``x̂`` fixed over a gap drops its dependence on ``y``, and at 8-28
    levels the draws come out too narrow and further from the exact product than Euler's
    (:func:`poe_backend.tasks.base.transport_field`). The weight rate holds for either:
    every member of ``dy = -((1 + g²)/2) S du + g dW`` has it (the experts' divergences in ``∂_u log π_u`` cancel those of the drift and the
    diffusion), the deterministic flow ``g = 0`` included; but that flow contracts by
    ``(σ'/σ)^Σλ`` per step, too fast for a product whose experts share a prior, and at P ≤ 4
    no weight can undo it: several times further from the exact product than g = 1 on the
    learned products of ``benchmarks/learned_experts.py`` at the task settings (README.md,
    Measurements, transport step).
    ``fk_scale`` multiplies the transport increment: 1 keeps the Feynman-Kac weights of the
    product (exact); 0 leaves the rewards' twist ratios alone, what the paper resamples by;
    values between temper the product's part (a bias traded for weights the reward drives).
    Resample on low ESS, then
    ``langevin_steps`` Langevin correctors with ``η = step_scale · σ² / Σλ``, each move
    accepted by the score-only Metropolis test (:func:`mcmc.score_only_log_ratio`) when
    ``metropolis``, else unadjusted (ULA). ``start`` (x-space, at ``levels[0]``) replaces
    the Gaussian start, e.g. a re-noised chunk in a Gibbs sweep.

    Defaults (``metropolis``, ``step_scale = 1``) from ``benchmarks/sampler_accuracy.py
    --runs 8`` (the table in README.md, Measurements): at 250 NFE per expert the sampler
    comes close to the two-sample floor on every analytic product. ULA leaves a bias the
    weights never see: on a Gaussian level ``N(0, v)`` its stationary variance is
    ``v / (1 - η / 2v)``, 1.33 v where σ dominates the data's scale; on the 3-expert 2-D
    product Metropolis-adjusted moves beat ULA, the more so at larger steps (README.md, The
    sampling math). The tasks turn it off: on learned experts the test rejects most moves
    (:func:`poe_backend.tasks.base.metropolis_field`).
    The last step, to t = 0, is deterministic: the product's clean prediction (Tweedie,
    :attr:`Evaluation.x0`) at the last level, with that step's weight increment and the
    exact rewards; it needs no forward, so no level's noise is left in the output. Exact
    cost: :func:`poe_backend.sampling.budget.planned_nfe`.
    """
    observer, tracker = Observer(len(levels), callback, should_stop), _Tracker(noise.shape[0])
    y = _initial_y(product, noise, levels[0], start)
    log_weights = torch.zeros(noise.shape[0], dtype=noise.dtype, device=noise.device)
    evaluation = product.evaluate(flow.x_from_y(y, levels[0]), levels[0])
    twist = product.twist(evaluation)
    for level, (t, t_next) in enumerate(zip(levels[:-1], levels[1:]), start=2):
        if t_next == 0.0:
            break
        steps = transport_steps(_max_weight(product), t, t_next, transport)
        tracker.substeps += len(steps) - 1
        for t_from, t_to in steps:
            delta_u = flow.sigma_from_t(t_from) ** 2 - flow.sigma_from_t(t_to) ** 2
            log_weights = log_weights + fk_scale * _transport_log_weight(product, evaluation, delta_u)
            y = _transport_step(product, y, evaluation, t_to, transport, generator)
            evaluation = product.evaluate(flow.x_from_y(y, t_to), t_to)
            new_twist = product.twist(evaluation)
            log_weights, twist = log_weights + new_twist - twist, new_twist
        (y, evaluation, twist), log_weights = tracker.maybe_resample(
            generator, product, log_weights, ess_threshold, (y, evaluation, twist), _index_y_state
        )
        observer.step(level, 0, t_next, product, lambda: flow.x_from_y(y, t_next), log_weights)
        y, evaluation, twist = _langevin_correctors(product, y, evaluation, twist, langevin_steps, step_scale, generator, observer, level, log_weights, tracker, metropolis)
    if levels[-1] > 0.0:
        return tracker.finish(product, flow.x_from_y(y, levels[-1]), log_weights, "fkc (score-only, Feynman-Kac weights)")
    x = evaluation.x0 if evaluation.t > 0.0 else evaluation.x
    scores = product.log_potential(x, 0.0)
    log_weights = log_weights + fk_scale * _transport_log_weight(product, evaluation, flow.sigma_from_t(evaluation.t) ** 2) + scores - twist
    observer.step(len(levels), 0, 0.0, product, lambda: x, log_weights)
    return tracker.finish(product, x, log_weights, "fkc (score-only, Feynman-Kac weights)", scores)


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
    ``langevin_steps`` ULA steps, then (when there are rewards) resampling at every level by
    the increment of the rewards' potentials, ``log φ_t - log φ_{t_prev}``, so the final
    selection is by the reward itself, not a power of it. No transport weights: biased in
    the experts' mode weights. The step to t = 0 is the clean prediction (no forward
    there). ``start`` as in :func:`sample_fkc`."""
    observer, tracker = Observer(len(levels), callback, should_stop), _Tracker(noise.shape[0])
    y = _initial_y(product, noise, levels[0], start)
    evaluation = product.evaluate(flow.x_from_y(y, levels[0]), levels[0])
    previous = product.twist(evaluation)
    for level, (t, t_next) in enumerate(zip(levels[:-1], levels[1:]), start=2):
        x0 = evaluation.x0
        if t_next == 0.0:
            y = x0  # the clean prediction: no forward at t = 0, no noise left
            observer.step(level, 0, 0.0, product, lambda: y)
            break
        y = x0 + (flow.sigma_from_t(t_next) / flow.sigma_from_t(t)) * (y - x0)
        evaluation = product.evaluate(flow.x_from_y(y, t_next), t_next)
        observer.step(level, 0, t_next, product, lambda: flow.x_from_y(y, t_next))
        y, evaluation, _ = _langevin_correctors(product, y, evaluation, None, langevin_steps, step_scale, generator, observer, level, None, tracker, metropolis=False)
        if product.rewards and t_next > 0.0:
            potential = product.twist(evaluation)
            indices = resampling.systematic(generator, potential - previous, potential.numel())
            y, evaluation, previous = y[indices], _index_evaluation(evaluation, indices), potential[indices]
            tracker.record_resampling(product, indices)
    x = flow.x_from_y(y, levels[-1])
    scores = product.log_potential(x, 0.0)
    return tracker.finish(product, x, scores - previous, "annealed langevin (paper, unweighted)", scores if levels[-1] == 0.0 else None)


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
        x = x + (t_next - t) * product.weighted_sum(product.velocities(x, t))
        observer.step(level, 0, t_next, product, lambda: x)
    scores = product.log_potential(x, 0.0)
    return tracker.finish(product, x, scores, "summed-velocity ODE (naive)", scores if levels[-1] == 0.0 else None)


def _transport_step(product: ProductOfExperts, y: Tensor, evaluation: Evaluation, t_to: float, transport: Transport, generator: torch.Generator) -> Tensor:
    """One step of the reverse SDE ``dy = -S du + dW`` (``u = σ²`` decreasing) in y-space,
    from the evaluation's level down to ``t_to``.

    "euler": Euler-Maruyama, ``y + Δu·S + sqrt(Δu)·z``; stable only while
    ``Σλ (1 - u'/u) <= 1`` (:func:`transport_steps` splits wider gaps). "exponential": the step
    solved exactly with the experts' clean predictions held at their start value (then
    ``S = Σλ (x̂ - y) / u``, ``x̂`` the λ-weighted mean prediction :attr:`Evaluation.x0`):
    ``y' = x̂ + (u'/u)^Σλ (y - x̂) + sqrt(v)·z`` with
    ``v = u' (1 - (u'/u)^(2Σλ-1)) / (2Σλ - 1)``; stable for any gap, and with one expert the
    DDPM posterior step ``x̂ + (u'/u)(y - x̂) + σ' sqrt(1 - u'/u)·z``."""
    t = evaluation.t
    u, u_to = flow.sigma_from_t(t) ** 2, flow.sigma_from_t(t_to) ** 2
    if transport == "euler":
        return y + ((u - u_to) * (1.0 - t)) * evaluation.score + math.sqrt(u - u_to) * flow.standard_normal_like(y, generator)
    clean, log_ratio = evaluation.x0, math.log(u_to / u)
    total = torch.as_tensor(product.total_weight(), dtype=y.dtype, device=y.device)
    excess = 2.0 * total - 1.0
    small = excess.abs() < 1e-6
    noise_fraction = torch.where(small, torch.full_like(excess, -log_ratio), -torch.expm1(excess * log_ratio) / torch.where(small, torch.ones_like(excess), excess))
    return clean + torch.exp(total * log_ratio) * (y - clean) + torch.sqrt(u_to * noise_fraction) * flow.standard_normal_like(y, generator)


def _transport_log_weight(product: ProductOfExperts, evaluation: Evaluation, delta_u: float) -> Tensor:
    """Feynman-Kac increment ``½ Δu (‖S‖² - Σ λ_i ‖s_i‖²)`` of a transport step of
    ``Δu = σ² - σ'²`` from the evaluation's level (y-space scores), shape ``(P,)``."""
    scale = 1.0 - evaluation.t  # x-space scores to y-space: s_y = (1 - t) s_x
    squared = product.weighted_sum([score * score for score in evaluation.scores])
    return 0.5 * delta_u * scale**2 * flow.batch_sum(evaluation.score * evaluation.score - squared)


def _max_weight(product: ProductOfExperts) -> float:
    """The largest ``Σ λ_i`` over the event (map weights: its largest element)."""
    return float(torch.as_tensor(product.total_weight()).max())


def _initial_y(product: ProductOfExperts, noise: Tensor, t: float, start: Tensor | None) -> Tensor:
    """y-space start at level t: the product of the experts' top levels,
    ``N(0, σ² / Σλ)``, or the given x-space ``start``."""
    if start is not None:
        return flow.y_from_x(start, t)
    return noise * flow.sigma_from_t(t) / torch.sqrt(torch.as_tensor(product.total_weight(), dtype=noise.dtype))


def transport_steps(total: float, t: float, t_next: float, transport: Transport) -> list[tuple[float, float]]:
    """The ``(from, to)`` time pairs :func:`sample_fkc` transports through from ``t`` to
    ``t_next`` (``total`` = the largest Σλ), one evaluation each: the stable Euler substeps,
    or the one exponential step."""
    return _substeps(total, t, t_next) if transport == "euler" else [(t, t_next)]


def _substeps(total: float, t: float, t_next: float) -> list[tuple[float, float]]:
    """Split ``t -> t_next`` geometrically in σ so that every step keeps
    ``total · (1 - σ'²/σ²) <= STABLE_TRANSPORT`` (``total`` = the largest Σλ; the
    Euler-Maruyama step of the product's score is stable for curvatures up to ``Σλ / σ²``)."""
    sigma, sigma_next = flow.sigma_from_t(t), flow.sigma_from_t(t_next)
    if sigma_next == 0.0 or total * (1.0 - (sigma_next / sigma) ** 2) <= STABLE_TRANSPORT:
        return [(t, t_next)]
    ratio = math.sqrt(max(1.0 - STABLE_TRANSPORT / total, 1e-12))
    count = math.ceil(math.log(sigma_next / sigma) / math.log(ratio))
    sigmas = [sigma * (sigma_next / sigma) ** (k / count) for k in range(count + 1)]
    times = [t] + [flow.t_from_sigma(s) for s in sigmas[1:-1]] + [t_next]
    return list(zip(times[:-1], times[1:]))


def _langevin_correctors(
    product: ProductOfExperts,
    y: Tensor,
    evaluation: Evaluation,
    twist: Tensor | None,
    num_steps: int,
    step_scale: float,
    generator: torch.Generator,
    observer: Observer,
    level: int,
    log_weights: Tensor | None,
    tracker: _Tracker,
    metropolis: bool,
) -> tuple[Tensor, Evaluation, Tensor | None]:
    """Langevin moves in y-space at the evaluation's level with ``η = step_scale · σ² / Σλ``.

    ``metropolis``: each move is accepted by the score-only Metropolis-Hastings ratio
    (:func:`mcmc.score_only_log_ratio`) of the level's target, times the twist ratio
    ``φ(new) / φ(old)`` when a ``twist`` (log φ per particle) is given and the product has
    rewards. Otherwise ULA, accepted by that twist ratio alone (exact for a reversible base
    move). Acceptance rates go to ``tracker``. None at t = 0 (zero step)."""
    t = evaluation.t
    if t <= 0.0:
        return y, evaluation, twist
    step_size = step_scale * flow.sigma_from_t(t) ** 2 / torch.as_tensor(product.total_weight(), dtype=y.dtype, device=y.device)
    twisted = twist is not None and bool(product.rewards)
    for step in range(1, num_steps + 1):
        score = (1.0 - t) * evaluation.score
        proposal = mcmc.ula_step(y, score, step_size, flow.standard_normal_like(y, generator))
        proposed = product.evaluate(flow.x_from_y(proposal, t), t)
        if metropolis or twisted:
            log_ratio = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
            if metropolis:
                log_ratio = log_ratio + mcmc.score_only_log_ratio(y, score, proposal, (1.0 - t) * proposed.score, step_size)
            proposed_twist = twist
            if twisted:
                proposed_twist = product.twist(proposed)
                log_ratio = log_ratio + proposed_twist - twist
            accepted = torch.log(flow.uniform_like(log_ratio, generator)) < log_ratio
            tracker.record_acceptance(accepted)
            if twist is None:
                y, evaluation = _where(accepted, (proposal, proposed), (y, evaluation))
            else:
                y, evaluation, twist = _where(accepted, (proposal, proposed, proposed_twist), (y, evaluation, twist))
        else:
            y, evaluation = proposal, proposed
        observer.step(level, step, t, product, lambda: flow.x_from_y(y, t), log_weights)
    return y, evaluation, twist


def _twisted_energy_state(product: ProductOfExperts, x: Tensor, t: float) -> mcmc.EnergyState:
    """``log γ_t(x) = log π_t(x) + log φ_t(x0_hat)`` with the score of ``π_t`` (the MALA
    proposal's drift; the accept step uses the full twisted density)."""
    evaluation = product.evaluate(x, t, with_energy=True)
    return mcmc.EnergyState(x, evaluation.log_density + product.twist(evaluation), evaluation.score)


def _index_energy_state(state: mcmc.EnergyState, indices: Tensor) -> mcmc.EnergyState:
    return mcmc.EnergyState(state.x[indices], state.log_density[indices], state.score[indices])


def _index_y_state(state: tuple[Tensor, Evaluation, Tensor], indices: Tensor) -> tuple[Tensor, Evaluation, Tensor]:
    y, evaluation, twist = state
    return y[indices], _index_evaluation(evaluation, indices), twist[indices]


def _index_evaluation(evaluation: Evaluation, indices: Tensor) -> Evaluation:
    return _map_evaluations(lambda value: value[indices], evaluation)


def _where(mask: Tensor, chosen: tuple, other: tuple) -> tuple:
    """Per particle, ``chosen`` where ``mask`` else ``other`` (tuples whose items are
    tensors or evaluations)."""

    def pick(a: Tensor, b: Tensor) -> Tensor:
        return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)

    return tuple(_map_evaluations(pick, a, b) if isinstance(a, Evaluation) else pick(a, b) for a, b in zip(chosen, other))


def _map_evaluations(function: Callable[..., Tensor], *evaluations: Evaluation) -> Evaluation:
    """Apply ``function`` field by field across evaluations of one level."""

    def each(values: list) -> Tensor | list | None:
        if values[0] is None:
            return None
        if isinstance(values[0], list):
            return [function(*items) for items in zip(*values)]
        return function(*values)

    first = evaluations[0]
    fields = ("x", "scores", "score", "velocities", "log_density")
    return Evaluation(t=first.t, total_weight=first.total_weight, **{name: each([getattr(e, name) for e in evaluations]) for name in fields})


class _Tracker:
    """Resampling decisions, ancestry, and the statistics a :class:`SampleResult` reports."""

    def __init__(self, num_particles: int) -> None:
        self.ess_history: list[float] = []
        self.resample_count = 0
        self.acceptances: list[float] = []
        self.ancestors = torch.arange(num_particles)
        self.substeps = 0

    def maybe_resample(self, generator: torch.Generator, product: ProductOfExperts, log_weights: Tensor, ess_threshold: float, state, index):
        """Systematic resampling of ``state`` (through ``index(state, indices)``) when the
        ESS is below ``ess_threshold · P``; returns the state and log-weights after it."""
        ess = resampling.effective_sample_size(log_weights)
        self.ess_history.append(ess)
        if ess >= ess_threshold * log_weights.numel():
            return state, log_weights
        indices = resampling.systematic(generator, log_weights, log_weights.numel())
        self.record_resampling(product, indices)
        return index(state, indices), torch.zeros_like(log_weights)

    def record_resampling(self, product: ProductOfExperts, indices: Tensor) -> None:
        """Count a resampling, follow each particle's origin and tell the experts."""
        self.resample_count += 1
        self.ancestors = self.ancestors[indices.cpu()]
        product.reindex(indices)

    def record_acceptance(self, accepted: Tensor) -> float:
        rate = float(accepted.double().mean())
        self.acceptances.append(rate)
        return rate

    def finish(self, product: ProductOfExperts, x: Tensor, log_weights: Tensor, path: str, scores: Tensor | None = None) -> SampleResult:
        """The result; ``scores`` the exact rewards ``Σ_j log r_j(x)`` at t = 0 (when the
        run has rewards and reached t = 0)."""
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
            substeps=self.substeps,
            forwards=product.passes,
            scores=scores if product.rewards else None,
        )

"""The score-only Metropolis test of the Langevin correctors, on Gaussians where it is exact."""

import math

import torch

from poe_backend.sampling import mcmc

VARIANCE = 2.0


def _score(x: torch.Tensor) -> torch.Tensor:
    return -x / VARIANCE


def test_trapezoid_ratio_equals_the_energy_ratio_on_a_gaussian() -> None:
    """For a linear score the trapezoid rule integrates it exactly, so the score-only ratio
    is the Metropolis-adjusted Langevin ratio computed with the true energy."""
    generator = torch.Generator().manual_seed(0)
    x, noise = torch.randn(64, 3, generator=generator, dtype=torch.float64), torch.randn(64, 3, generator=generator, dtype=torch.float64)
    step = 0.7
    proposal = mcmc.ula_step(x, _score(x), step, noise)
    energy = lambda z: -(z**2).sum(1) / (2 * VARIANCE)  # noqa: E731
    log_q = lambda to, start: -((to - start - step * _score(start)) ** 2).sum(1) / (4 * step)  # noqa: E731
    expected = energy(proposal) - energy(x) + log_q(x, proposal) - log_q(proposal, x)
    torch.testing.assert_close(mcmc.score_only_log_ratio(x, _score(x), proposal, _score(proposal), step), expected, rtol=0, atol=1e-12)


def test_metropolis_keeps_a_gaussian_where_ula_inflates_it() -> None:
    """Ten moves of step η = v from exact samples of N(0, v): with the test the variance
    stays v; unadjusted it goes to ULA's stationary ``v / (1 - η / 2v)`` = 2v."""
    generator = torch.Generator().manual_seed(1)
    start = torch.randn(200_000, 1, generator=generator, dtype=torch.float64) * math.sqrt(VARIANCE)
    step = VARIANCE
    adjusted, unadjusted = start.clone(), start.clone()
    for _ in range(10):
        proposal = mcmc.ula_step(adjusted, _score(adjusted), step, torch.randn(adjusted.shape, generator=generator, dtype=torch.float64))
        log_ratio = mcmc.score_only_log_ratio(adjusted, _score(adjusted), proposal, _score(proposal), step)
        accepted = torch.log(torch.rand(log_ratio.shape, generator=generator, dtype=torch.float64)) < log_ratio
        adjusted = torch.where(accepted[:, None], proposal, adjusted)
        unadjusted = mcmc.ula_step(unadjusted, _score(unadjusted), step, torch.randn(unadjusted.shape, generator=generator, dtype=torch.float64))
    assert abs(float(adjusted.var()) / VARIANCE - 1.0) < 0.02
    assert abs(float(unadjusted.var()) / VARIANCE - 1.0 / (1.0 - step / (2 * VARIANCE))) < 0.05

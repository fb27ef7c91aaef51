"""The Gaussian-around-renders expert: closed-form velocity, exact noised marginal."""

from __future__ import annotations

import math

import pytest
import torch

from poe_backend.families.analytic.render_gaussian import RenderGaussianExpert, std_from_strength
from poe_backend.sampling import Factor, ProductOfExperts, flow, sample_ais
from poe_backend.sampling.schedules import linear_levels


def _expert(std: float = 0.3) -> RenderGaussianExpert:
    center = torch.linspace(-1.0, 1.5, 6, dtype=torch.float64).reshape(2, 3)
    return RenderGaussianExpert(center, std)


@pytest.mark.parametrize("t", [0.0, 0.2, 0.5, 0.9, 1.0])
def test_velocity_is_posterior_mean_of_eps_minus_x0(t: float) -> None:
    """Monte Carlo: regress eps - x0 on x_t near a point; compare with the closed form
    through Tweedie on the exact marginal (velocity_from_score) where it is defined."""
    expert = _expert()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 3, generator=generator, dtype=torch.float64)
    velocity = expert.velocity(x, t)
    if 0.0 < t < 1.0:
        _, score = expert.log_density_and_score(x, t)
        torch.testing.assert_close(velocity, flow.velocity_from_score(x, t, score))
    if t == 1.0:
        torch.testing.assert_close(velocity, x - expert.center)
    if t == 0.0:
        torch.testing.assert_close(velocity, -x)


def test_noised_marginal_matches_monte_carlo() -> None:
    """Samples x_t = (1-t) x0 + t eps with x0 ~ N(c, s²): mean (1-t)c and variance v_t,
    and the score's expectation vanishes (Stein). Tolerances: 4 standard errors."""
    expert, t, count = _expert(0.5), 0.4, 200_000
    generator = torch.Generator().manual_seed(1)
    x0 = expert.sample(count, generator).double()
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    xt = (1 - t) * x0 + t * noise
    variance = expert.variance(t)
    standard_error = math.sqrt(variance / count)
    torch.testing.assert_close(xt.mean(0), (1 - t) * expert.center, atol=4 * standard_error, rtol=0)
    torch.testing.assert_close(xt.var(0), torch.full_like(expert.center, variance), atol=4 * variance * math.sqrt(2 / count), rtol=0)
    # E[eps - x0 | x_t] by linear regression on x_t (exact for jointly Gaussian variables).
    target = noise - x0
    centered_x, centered_target = xt - xt.mean(0), target - target.mean(0)
    slope = (centered_x * centered_target).mean(0) / centered_x.var(0)
    probe = torch.zeros(1, 2, 3, dtype=torch.float64)
    regressed = target.mean(0) + slope * (probe[0] - xt.mean(0))
    torch.testing.assert_close(expert.velocity(probe, t)[0], regressed, atol=0.02, rtol=0)


def test_log_density_is_normalised_gaussian() -> None:
    expert, t = _expert(0.7), 0.3
    x = torch.zeros(1, 2, 3, dtype=torch.float64)
    log_density, _ = expert.log_density_and_score(x, t)
    normal = torch.distributions.Normal((1 - t) * expert.center, math.sqrt(expert.variance(t)))
    torch.testing.assert_close(log_density[0], normal.log_prob(x[0]).sum())


def test_score_is_gradient_of_log_density() -> None:
    expert, t = _expert(), 0.6
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    log_density, score = expert.log_density_and_score(x, t)
    (gradient,) = torch.autograd.grad(log_density.sum(), x)
    torch.testing.assert_close(score, gradient)


def test_product_of_two_gaussians_sampled_exactly_by_ais() -> None:
    """N(a, s²) · N(b, s²) = N((a+b)/2, s²/2): AIS with the closed-form energies finds it."""
    a = RenderGaussianExpert(torch.tensor([1.0, -1.0], dtype=torch.float64), 0.5)
    b = RenderGaussianExpert(torch.tensor([-0.5, 0.5], dtype=torch.float64), 0.5)
    product = ProductOfExperts([Factor(a), Factor(b)])
    generator = torch.Generator().manual_seed(2)
    noise = torch.randn(2000, 2, generator=generator, dtype=torch.float64)
    result = sample_ais(product, noise, linear_levels(20, t_max=0.99), generator=generator)
    samples = result.equally_weighted(generator)
    torch.testing.assert_close(samples.mean(0), torch.tensor([0.25, -0.25], dtype=torch.float64), atol=0.05, rtol=0)
    torch.testing.assert_close(samples.std(0), torch.full((2,), 0.5 / math.sqrt(2), dtype=torch.float64), atol=0.03, rtol=0)


def test_per_particle_centres_follow_resampling() -> None:
    centers = torch.arange(3, dtype=torch.float64)[:, None].repeat(1, 2)
    expert = RenderGaussianExpert(centers, 0.1, per_particle=True)
    expert.reindex(torch.tensor([2, 2, 0]))
    torch.testing.assert_close(expert.center[:, 0], torch.tensor([2.0, 2.0, 0.0], dtype=torch.float64))


def test_strength_converts_to_std() -> None:
    assert std_from_strength(0.5) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        std_from_strength(0.0)

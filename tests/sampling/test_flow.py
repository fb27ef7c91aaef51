"""Conversions between velocity, score and clean prediction, and the GMM expert's exact
velocity/score/energy against independent closed forms."""

import numpy as np
import pytest
import torch

from poe_backend.families.analytic.gmm import GaussianMixture, GaussianMixtureExpert
from poe_backend.sampling import flow

def _gaussian() -> tuple[np.ndarray, np.ndarray]:
    return np.array([0.7, -1.2]), np.array([[1.3, 0.4], [0.4, 0.6]])


@pytest.mark.parametrize("t", [0.05, 0.3, 0.7, 0.95])
def test_round_trips(t: float) -> None:
    generator = torch.Generator().manual_seed(0)
    x, velocity = torch.randn(5, 3, generator=generator), torch.randn(5, 3, generator=generator)
    score = flow.score_from_velocity(x, t, velocity)
    torch.testing.assert_close(flow.velocity_from_score(x, t, score), velocity)
    torch.testing.assert_close(flow.x0_from_score(x, t, score), flow.x0_from_velocity(x, t, velocity))
    # x = (1 - t) x0 + t eps must hold for the predictions
    torch.testing.assert_close((1 - t) * flow.x0_from_velocity(x, t, velocity) + t * flow.eps_from_velocity(x, t, velocity), x)
    torch.testing.assert_close(flow.x_from_y(flow.y_from_x(x, t), t), x)
    assert flow.t_from_sigma(flow.sigma_from_t(t)) == pytest.approx(t)


def test_undefined_ends_raise() -> None:
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError):
        flow.score_from_velocity(x, 0.0, x)
    with pytest.raises(ValueError):
        flow.velocity_from_score(x, 1.0, x)


@pytest.mark.parametrize("t", [0.0, 0.2, 0.6, 1.0])
def test_gaussian_velocity_matches_posterior_means(t: float) -> None:
    """v = E[eps | x_t] - E[x0 | x_t], written out with numpy for one Gaussian."""
    mean, covariance = _gaussian()
    expert = GaussianMixtureExpert(GaussianMixture(torch.ones(1), torch.tensor(mean)[None], torch.tensor(covariance)[None]))
    x = np.array([[0.3, 0.1], [-2.0, 1.5]])
    scale = 1 - t
    marginal_covariance = scale**2 * covariance + t**2 * np.eye(2)
    solved = np.linalg.solve(marginal_covariance, (x - scale * mean).T).T
    x0 = mean + scale * (covariance @ solved.T).T
    eps = t * solved
    velocity = expert.velocity(torch.tensor(x), t).numpy()
    np.testing.assert_allclose(velocity, eps - x0, rtol=1e-10, atol=1e-12)


def test_score_is_gradient_of_energy_and_matches_velocity() -> None:
    generator = torch.Generator().manual_seed(1)
    mixture = GaussianMixture(
        torch.tensor([0.3, 0.7]),
        torch.tensor([[-1.0, 0.5], [2.0, -1.0]]),
        torch.stack([torch.tensor([[0.5, 0.1], [0.1, 0.4]]), torch.eye(2) * 1.5]),
    )
    expert = GaussianMixtureExpert(mixture)
    for t in (0.1, 0.5, 0.9):
        x = torch.randn(6, 2, generator=generator).requires_grad_(True)
        log_density, score = expert.log_density_and_score(x, t)
        (gradient,) = torch.autograd.grad(log_density.sum(), x)
        torch.testing.assert_close(score, gradient)
        torch.testing.assert_close(flow.score_from_velocity(x.detach(), t, expert.velocity(x.detach(), t)), score.detach())


def test_noised_marginal_matches_monte_carlo() -> None:
    """Mean and covariance of (1-t) x0 + t eps over exact mixture samples."""
    generator = torch.Generator().manual_seed(2)
    mixture = GaussianMixture(torch.tensor([0.4, 0.6]), torch.tensor([[-2.0, 0.0], [1.0, 1.0]]), torch.stack([torch.eye(2) * 0.3, torch.eye(2)]))
    t = 0.4
    x0 = mixture.sample(200_000, generator)
    xt = (1 - t) * x0 + t * torch.randn(x0.shape, generator=generator)
    noised = mixture.noised(t)
    mean = (noised.weights[:, None] * noised.means).sum(0)
    second = sum(w * (c + torch.outer(m, m)) for w, m, c in zip(noised.weights, noised.means, noised.covariances))
    torch.testing.assert_close(xt.mean(0), mean, atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(xt.T), second - torch.outer(mean, mean), atol=0.02, rtol=0)

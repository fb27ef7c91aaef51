"""Exact products of mixtures, the product's composition rules, and conditionals."""

import pytest
import torch

from poe_backend.families.analytic.gmm import GaussianMixture, GaussianMixtureExpert, product_of_mixtures
from poe_backend.sampling import Factor, ProductOfExperts

def _mixture_a() -> GaussianMixture:
    return GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-1.0, 0.5], [2.0, -1.0]]), torch.stack([torch.tensor([[0.5, 0.1], [0.1, 0.4]]), torch.eye(2) * 1.5]))


def _mixture_b() -> GaussianMixture:
    return GaussianMixture(torch.tensor([0.6, 0.4]), torch.tensor([[0.0, 1.0], [1.0, -2.0]]), torch.stack([torch.eye(2), torch.tensor([[0.8, -0.3], [-0.3, 0.6]])]))


def test_product_density_is_proportional_to_product_of_densities() -> None:
    generator = torch.Generator().manual_seed(0)
    a, b = _mixture_a(), _mixture_b()
    product = product_of_mixtures([a, b])
    x = torch.randn(50, 2, generator=generator) * 2
    difference = product.log_density_and_score(x)[0] - a.log_density_and_score(x)[0] - b.log_density_and_score(x)[0]
    assert float(difference.std()) < 1e-10  # a constant: -log Z
    assert float(product.weights.sum()) == pytest.approx(1.0)


def test_power_of_gaussian_scales_covariance() -> None:
    gaussian = GaussianMixture(torch.ones(1), torch.tensor([[1.0, 2.0]]), torch.tensor([[[2.0, 0.5], [0.5, 1.0]]]))
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(1))
    difference = gaussian.power(3.0).log_density_and_score(x)[0] - 3.0 * gaussian.log_density_and_score(x)[0]
    assert float(difference.std()) < 1e-10
    with pytest.raises(ValueError):
        _mixture_a().power(2.0)


def test_product_score_is_weighted_sum_and_expert_with_itself_is_doubled_weight() -> None:
    """p · p has the score of p² (Factor weight 2), at every level."""
    expert = GaussianMixtureExpert(_mixture_a())
    twice = ProductOfExperts([Factor(expert), Factor(expert)])
    doubled = ProductOfExperts([Factor(expert, 2.0)])
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(2))
    for t in (0.1, 0.5, 0.9):
        both, single = twice.evaluate(x, t), doubled.evaluate(x, t)
        torch.testing.assert_close(both.score, single.score)
        torch.testing.assert_close(both.x0, single.x0)
    assert (twice.nfe, doubled.nfe) == (6, 3)  # one forward per expert per evaluation


def test_map_weights_act_elementwise() -> None:
    """Regional experts: a weight map gives each expert its own coordinates."""
    a, b = GaussianMixtureExpert(_mixture_a()), GaussianMixtureExpert(_mixture_b())
    left, right = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    product = ProductOfExperts([Factor(a, left), Factor(b, right)])
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))
    evaluation = product.evaluate(x, 0.5)
    torch.testing.assert_close(evaluation.score[:, 0], evaluation.scores[0][:, 0])
    torch.testing.assert_close(evaluation.score[:, 1], evaluation.scores[1][:, 1])


def test_conditional_matches_joint_density_slice() -> None:
    """log p(x_free | x_known) = log p(x) - log p(x_known) for the batched conditional."""
    mixture = GaussianMixture(
        torch.tensor([0.5, 0.5]),
        torch.tensor([[0.0, 1.0, -1.0], [1.0, -1.0, 0.5]]),
        torch.stack([torch.tensor([[1.0, 0.3, 0.1], [0.3, 0.8, -0.2], [0.1, -0.2, 0.6]]), torch.eye(3) * 0.7]),
    )
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(4))
    conditional = mixture.conditional([1], [0, 2], x[:, [0, 2]])
    marginal = mixture.conditional([0, 2], [], None)
    expected = mixture.log_density_and_score(x)[0] - marginal.log_density_and_score(x[:, [0, 2]])[0]
    torch.testing.assert_close(conditional.log_density_and_score(x[:, [1]])[0], expected)

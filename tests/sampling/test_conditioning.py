"""The paper's final version: conditional experts (the alignment term on a child's velocity,
checked against finite differences; off means bit-identical to the plain product) and the
best-scoring particle as the output."""

import pytest
import torch

from poe_backend.sampling import Factor, ProductOfExperts, Reward, sample_annealed_langevin, sample_fkc, sample_summed_velocity
from poe_backend.sampling.experts import Conditioning, GenerativeExpert


class MLPExpert(GenerativeExpert):
    """A small nonlinear velocity field ``v(x, t) = W2 tanh(W1 x + t b) (P, 2, 3)``, weights
    frozen, differentiable in ``x``; counts its calls and the batch sizes it saw."""

    def __init__(self, seed: int, max_batch: int | None = None) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(6, 8, generator=generator) / 3
        self.w2 = torch.randn(8, 6, generator=generator) / 3
        self.b = torch.randn(8, generator=generator)
        self.max_batch = max_batch
        self.batches: list[int] = []

    def velocity(self, x: torch.Tensor, t: float) -> torch.Tensor:
        self.batches.append(x.shape[0])
        hidden = torch.tanh(x.reshape(x.shape[0], -1) @ self.w1 + t * self.b)
        return (hidden @ self.w2).reshape(x.shape) - x


def _loss(child: MLPExpert, x: torch.Tensor, t: float, targets: list[torch.Tensor], region: torch.Tensor) -> torch.Tensor:
    """``Σ_p Σ region·(v(x) − v_p)²`` per particle, ``(P,)``."""
    velocity = child.velocity(x, t)
    return sum((region * (velocity - target) ** 2).flatten(1).sum(1) for target in targets)


def test_alignment_term_is_the_finite_difference_gradient_of_the_disagreement() -> None:
    """``v_cond = v − w ∇_x Σ_p ‖v − sg(v_p)‖²_region``, the gradient checked element by
    element against central differences, in micro-batches of 2 (5 particles: 2 + 2 + 1)."""
    child, parents = MLPExpert(0, max_batch=2), [MLPExpert(1), MLPExpert(2)]
    x = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(3))
    t, weight = 0.6, 0.25
    region = torch.tensor([[1.0, 0.5, 0.0], [1.0, 1.0, 0.0]])
    targets = [parent.velocity(x, t) for parent in parents]
    aligned = child.aligned_velocity(x, t, targets, region, weight)
    assert child.batches == [2, 2, 1]
    step, numeric = 1e-6, torch.zeros_like(x)
    for index in range(x[0].numel()):
        offset = torch.zeros(x[0].numel())
        offset[index] = step
        offset = offset.reshape(x.shape[1:])
        numeric.view(5, -1)[:, index] = (_loss(child, x + offset, t, targets, region) - _loss(child, x - offset, t, targets, region)) / (2 * step)
    expected = child.velocity(x, t) - weight * numeric
    torch.testing.assert_close(aligned, expected, rtol=1e-7, atol=1e-8)
    assert (aligned - child.velocity(x, t)).abs().max() > 1e-3  # the term does something


def test_product_conditions_children_on_parents_and_counts_the_backward() -> None:
    parent, child = MLPExpert(1), MLPExpert(0)
    product = ProductOfExperts([Factor(child), Factor(parent)], conditioning=[Conditioning(child=0, parents=(1,), weight=0.1)])
    x = torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(4))
    velocities = product.velocities(x, 0.5)
    torch.testing.assert_close(velocities[0], child.aligned_velocity(x, 0.5, [parent.velocity(x, 0.5)], 1.0, 0.1))
    torch.testing.assert_close(velocities[1], parent.velocity(x, 0.5))
    assert (product.nfe, product.passes, product.passes_per_round()) == (2, 4, 4)  # child: forward + 2 for the backward


def test_conditioning_links_are_validated() -> None:
    a, b = MLPExpert(0), MLPExpert(1)
    with pytest.raises(ValueError, match="cycle"):
        ProductOfExperts([Factor(a), Factor(b)], conditioning=[Conditioning(0, (1,), 0.1), Conditioning(1, (0,), 0.1)])
    with pytest.raises(ValueError, match="no factor 2"):
        ProductOfExperts([Factor(a), Factor(b)], conditioning=[Conditioning(0, (2,), 0.1)])


def test_no_conditioning_is_bit_identical_to_the_plain_product() -> None:
    """A run with an empty conditioning list gives exactly the particles and weights of the
    product built without the argument (same seed), and a conditioned run differs."""

    def run(conditioning: list[Conditioning] | None) -> torch.Tensor:
        factors = [Factor(MLPExpert(0)), Factor(MLPExpert(1))]
        product = ProductOfExperts(factors) if conditioning is None else ProductOfExperts(factors, conditioning=conditioning)
        noise = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(5))
        result = sample_fkc(product, noise, [0.9, 0.6, 0.3, 0.0], generator=torch.Generator().manual_seed(6), langevin_steps=1, metropolis=False)
        return torch.cat([result.particles.flatten(), result.log_weights])

    plain = run(None)
    assert torch.equal(plain, run([]))
    assert not torch.equal(plain, run([Conditioning(1, (0,), 0.05)]))


class QuadraticReward(Reward):
    """``log r(x) = −‖x − c‖²`` at t = 0, tempered by ``1 − t`` before."""

    def __init__(self, center: torch.Tensor) -> None:
        self.center = center

    def log_potential(self, x0: torch.Tensor, t: float) -> torch.Tensor:
        return -(1.0 - t) * ((x0 - self.center) ** 2).flatten(1).sum(1)


@pytest.mark.parametrize("sampler", [sample_fkc, sample_annealed_langevin, sample_summed_velocity])
def test_best_selection_picks_the_highest_final_score(sampler) -> None:
    """Every sampler reports each particle's exact final reward; ``select="best"`` returns
    its argmax (the paper's output), ``"draw"`` a draw by weight; no rewards, no best."""
    reward = QuadraticReward(torch.full((2, 3), 0.5))
    product = ProductOfExperts([Factor(MLPExpert(0)), Factor(MLPExpert(1))], rewards=[reward])
    noise = torch.randn(8, 2, 3, generator=torch.Generator().manual_seed(7))
    result = sampler(product, noise, [0.9, 0.6, 0.3, 0.0], generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(result.scores, reward.log_potential(result.particles, 0.0))
    assert result.chosen_index(0, "best") == int(torch.argmax(result.scores))
    assert result.scores[result.chosen_index(0, "best")] == result.scores.max()
    assert result.stats()["scores"] == pytest.approx(result.scores.tolist())
    plain = sampler(ProductOfExperts([Factor(MLPExpert(0))]), noise, [0.9, 0.6, 0.3, 0.0], generator=torch.Generator().manual_seed(8))
    assert plain.scores is None
    with pytest.raises(ValueError, match="needs rewards"):
        plain.chosen_index(0, "best")


def test_fk_scale_tempers_the_transport_weight_and_zero_leaves_the_rewards_alone() -> None:
    """Without resampling the particles' paths do not depend on ``fk_scale``: the log-weights
    are ``fk_scale · T + R`` (T the experts' disagreement, R the reward's twist ratios), so
    runs at 0, 0.5 and 1 lie on one line."""
    reward = QuadraticReward(torch.full((2, 3), 0.5))
    noise = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(9))

    def run(scale: float):
        product = ProductOfExperts([Factor(MLPExpert(0)), Factor(MLPExpert(1))], rewards=[reward])
        return sample_fkc(product, noise, [0.9, 0.6, 0.3, 0.0], generator=torch.Generator().manual_seed(10), langevin_steps=0, ess_threshold=0.0, fk_scale=scale)

    zero, half, one = run(0.0), run(0.5), run(1.0)
    torch.testing.assert_close(zero.particles, one.particles)
    torch.testing.assert_close(half.log_weights, (zero.log_weights + one.log_weights) / 2)
    assert (one.log_weights - zero.log_weights).abs().max() > 1e-3  # the experts disagree

"""The learned velocity net: flow matching recovers a Gaussian's exact velocity, the cache
round-trips, the expert wrapper keeps dtypes and follows resampling."""

import torch

from poe_backend.families.analytic.gmm import GaussianMixture, GaussianMixtureExpert
from benchmarks.miniatures.flow_net import LearnedExpert, VelocityNet, load_or_train, train_velocity

GAUSSIAN = GaussianMixture(
    torch.tensor([1.0], dtype=torch.float64),
    torch.tensor([[1.0, -0.5]], dtype=torch.float64),
    torch.tensor([[[0.5, 0.2], [0.2, 0.3]]], dtype=torch.float64),
)


def _trained_net() -> VelocityNet:
    torch.manual_seed(0)
    net = VelocityNet(2, width=64, depth=3)
    data = GAUSSIAN.sample(20000, torch.Generator().manual_seed(1))
    train_velocity(net, data, steps=3000, batch_size=256, learning_rate=2e-3, seed=0)
    return net


def test_trained_velocity_matches_the_exact_gaussian_velocity():
    expert, exact, generator = LearnedExpert(_trained_net()), GaussianMixtureExpert(GAUSSIAN), torch.Generator().manual_seed(2)
    for t in (0.05, 0.2, 0.5, 0.8, 0.95):
        x = GAUSSIAN.noised(t).sample(2000, generator)
        learned, truth = expert.velocity(x, t), exact.velocity(x, t)
        assert learned.dtype == torch.float64
        relative = float((learned - truth).norm() / truth.norm())
        assert relative < 0.1, f"t={t}: relative velocity error {relative:.3f}"


def test_load_or_train_saves_then_loads_without_training(tmp_path):
    path = tmp_path / "learned" / "net.pt"
    trained = load_or_train(path, lambda: VelocityNet(2, width=16, depth=2), lambda net: train_velocity(net, torch.randn(64, 2), steps=5, batch_size=16))
    assert path.exists() and not list(path.parent.glob("*.tmp"))

    def refuse(net: VelocityNet) -> None:
        raise AssertionError("a cached net must not be trained again")

    loaded = load_or_train(path, lambda: VelocityNet(2, width=16, depth=2), refuse)
    x, t = torch.randn(8, 2), torch.full((8,), 0.3)
    assert torch.equal(loaded(x, t), trained(x, t))


def test_per_particle_condition_follows_resampling():
    torch.manual_seed(0)
    net = VelocityNet(2, condition_dimension=1, width=16, depth=1)
    conditions = torch.tensor([[0.0], [5.0], [-3.0]])
    expert = LearnedExpert(net, conditions)
    x = torch.zeros(3, 2, dtype=torch.float64)
    before = expert.velocity(x, 0.5)
    expert.reindex(torch.tensor([2, 2, 0]))
    assert torch.equal(expert.velocity(x, 0.5), before[[2, 2, 0]])
    fixed = LearnedExpert(net, torch.tensor([5.0]))
    assert torch.equal(fixed.velocity(x, 0.5), before[[1, 1, 1]])

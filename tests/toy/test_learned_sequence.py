"""The sim2video_ar miniature: a learned autoregressive expert × render Gaussians with an
exact answer (benchmarks.miniatures.learned_sequence)."""

import pytest
import torch

from poe_backend.sampling import ProductOfExperts, samplers
from poe_backend.sampling.schedules import log_snr_levels
from benchmarks.miniatures.learned_sequence import DTYPE, default_case, history_condition


def test_history_condition_pads_the_past_and_marks_the_position() -> None:
    history = torch.tensor([[1.0, 2.0]], dtype=DTYPE)
    torch.testing.assert_close(history_condition(history, 2, 4), torch.tensor([[1.0, 2.0, 0.0, 0.0, 0.0, 1.0, 0.0]], dtype=DTYPE))


def test_exact_target_is_the_mixture_times_the_renders() -> None:
    """The target's density ratio to the mixture is the render Gaussian's, up to a constant."""
    case = default_case()
    target, points = case.exact_target(), torch.randn(5, case.sections, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    ratio = target.log_density_and_score(points)[0] - case.mixture.log_density_and_score(points)[0] + ((points - case.renders) ** 2).sum(1) * case.render_weight / (2 * case.render_std**2)
    torch.testing.assert_close(ratio - ratio[0], torch.zeros(5, dtype=DTYPE), rtol=0, atol=1e-9)


@pytest.mark.slow
def test_learned_conditional_matches_the_exact_one(tmp_path) -> None:
    """Section 1's sequence expert given section 0: the learned net's own flow samples have
    the exact conditional's mean and variance within the model's error (measured: mean off by
    0.057 for a spread of about 0.7, variance 0.91×; trains the net, ~10-30 s on one
    thread)."""
    torch.set_num_threads(1)
    case = default_case()
    net = case.net(tmp_path)
    given = torch.full((4000, 1), 0.5, dtype=DTYPE)
    exact = case.mixture.conditional([1], [0], given[:1])
    learned = case.factory(net)(1, [given, None, None, None]).factors[0]
    noise = torch.randn(4000, 1, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    samples = samplers.sample_summed_velocity(ProductOfExperts([learned]), noise, log_snr_levels(200), generator=torch.Generator()).particles
    mean = float((exact.weights[0] * exact.means[0, :, 0]).sum())
    second = float((exact.weights[0] * (exact.covariances[:, 0, 0] + exact.means[0, :, 0] ** 2)).sum())
    assert abs(float(samples.mean()) - mean) < 0.1
    assert abs(float(samples.var()) / (second - mean**2) - 1.0) < 0.15

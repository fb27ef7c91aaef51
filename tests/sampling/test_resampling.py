"""Resampling is unbiased and ESS behaves at its extremes (blackjax-style checks)."""

import math

import pytest
import torch

from poe_backend.sampling import resampling

@pytest.mark.parametrize("resampler", [resampling.systematic, resampling.multinomial])
def test_resampler_is_unbiased(resampler) -> None:
    """Average offspring counts equal N·w_i within 4 standard errors over 4000 draws."""
    generator = torch.Generator().manual_seed(0)
    weights = torch.tensor([0.05, 0.4, 0.15, 0.3, 0.1])
    num_samples, draws = 7, 4000
    counts = torch.zeros(5)
    for _ in range(draws):
        counts += torch.bincount(resampler(generator, weights.log(), num_samples), minlength=5)
    expected = num_samples * weights
    standard_error = torch.sqrt(num_samples * weights * (1 - weights) / draws)
    assert torch.all((counts / draws - expected).abs() < 4 * standard_error + 1e-3)


def test_resampled_expectation_matches_weighted_expectation() -> None:
    generator = torch.Generator().manual_seed(1)
    values = torch.randn(5000, generator=generator)
    log_weights = -0.5 * (values - 1.0) ** 2  # tilts N(0,1) to N(0.5, 0.5)
    weighted = float((torch.softmax(log_weights, 0) * values).sum())
    resampled = values[resampling.systematic(generator, log_weights, 5000)]
    assert float(resampled.mean()) == pytest.approx(weighted, abs=0.01)
    assert weighted == pytest.approx(0.5, abs=0.05)


def test_effective_sample_size_extremes() -> None:
    assert resampling.effective_sample_size(torch.zeros(10)) == pytest.approx(10)
    assert resampling.effective_sample_size(torch.tensor([0.0, -math.inf, -math.inf])) == pytest.approx(1)
    with pytest.raises(FloatingPointError):
        resampling.effective_sample_size(torch.full((3,), -math.inf))


def test_systematic_keeps_zero_weight_particles_out() -> None:
    generator = torch.Generator().manual_seed(2)
    log_weights = torch.tensor([0.0, -math.inf, 0.0, -math.inf])
    indices = resampling.systematic(generator, log_weights, 1000)
    assert set(indices.tolist()) <= {0, 2}


def test_the_chosen_particle_is_drawn_by_weight_and_fixed_by_the_seed():
    log_weights = torch.log(torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64))
    draws = [resampling.chosen_particle(log_weights, seed) for seed in range(3000)]
    shares = torch.bincount(torch.tensor(draws), minlength=3).double() / len(draws)
    assert torch.allclose(shares, torch.exp(log_weights), atol=0.03)  # not always the largest weight
    assert resampling.chosen_particle(log_weights, 11) == resampling.chosen_particle(log_weights, 11)

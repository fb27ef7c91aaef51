"""Progress reports, cancellation and NFE accounting of every sampler."""

import pytest
import torch

from poe_backend.sampling import Progress, SamplingCancelled, sample_ais, sample_annealed_langevin, sample_fkc, sample_summed_velocity
from poe_backend.sampling.schedules import log_snr_levels
from poe_backend.toy.spec import parse_spec
from tests.toy import products

SAMPLERS = [sample_ais, sample_fkc, sample_annealed_langevin, sample_summed_velocity]


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda f: f.__name__)
def test_progress_is_monotonic_and_counts_every_forward(sampler) -> None:
    spec = parse_spec(products.two_experts_2d())
    product, reports = spec.product(), []
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(64, 2, generator=generator, dtype=torch.float64)
    result = sampler(product, noise, log_snr_levels(10), generator=generator, callback=reports.append)
    keys = [(report.level, report.step) for report in reports]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert [r.nfe for r in reports] == sorted(r.nfe for r in reports)
    assert result.nfe == product.nfe == reports[-1].nfe
    assert all(isinstance(r, Progress) and r.particles.shape == (64, 2) for r in reports)
    assert reports[-1].level == reports[-1].num_levels == 10


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda f: f.__name__)
def test_should_stop_cancels_within_one_step(sampler) -> None:
    spec = parse_spec(products.two_experts_2d())
    product, steps = spec.product(), []
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(16, 2, generator=generator, dtype=torch.float64)
    with pytest.raises(SamplingCancelled):
        sampler(product, noise, log_snr_levels(50), generator=generator, callback=steps.append, should_stop=lambda: len(steps) >= 3)
    assert len(steps) == 3


def test_nfe_matches_documented_budget() -> None:
    """Defaults of the toy: 100 levels, 4 Langevin steps -> at most 500 per expert."""
    spec = parse_spec(products.two_experts_2d())
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(8, 2, generator=generator, dtype=torch.float64)
    ais, fkc = spec.product(), spec.product()
    sample_ais(ais, noise, log_snr_levels(100), generator=generator)
    sample_fkc(fkc, noise, log_snr_levels(100), generator=generator)
    assert ais.nfe == 2 * 100 * 5
    assert fkc.nfe == 2 * (1 + 98 * 5)  # no correctors and no forward at t = 0


def test_wide_level_gaps_are_split_into_stable_substeps() -> None:
    """A stiff product (Σλ = 6) on 4 levels stays finite and in place (one unsplit Euler
    step from σ = 3.2 to 0.01 would multiply y by about 1 - 6 = -5 and diverge). Four levels
    are still too few for the right spread, so only a loose bound on it is checked."""
    spec = parse_spec({"experts": [{"type": "gmm", "weights": [1.0], "means": [[0.5, -0.5]], "covs": [[[0.02, 0.0], [0.0, 0.02]]], "lambda": 6.0}]})
    generator = torch.Generator().manual_seed(0)
    product = spec.product()
    result = sample_fkc(product, torch.randn(500, 2, generator=generator, dtype=torch.float64), log_snr_levels(4), generator=generator)
    samples = result.equally_weighted(generator)
    assert product.nfe > 1 + 3 * 5  # substeps were taken
    assert bool(torch.isfinite(samples).all())
    torch.testing.assert_close(samples.mean(0), torch.tensor([0.5, -0.5], dtype=torch.float64), atol=0.03, rtol=0)
    assert 0.2 < float(samples.var(0).mean()) / (0.02 / 6.0) < 2.0

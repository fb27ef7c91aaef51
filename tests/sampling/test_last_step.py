"""The last step to t = 0 is the product's clean prediction (no fresh noise, no forward at
t = 0), and the planned cost of a run equals what it reports."""

from functools import partial

import pytest
import torch

from poe_backend.families.analytic.gmm import GaussianMixture, GaussianMixtureExpert
from poe_backend.sampling import Factor, ProductOfExperts, sample_annealed_langevin, sample_fkc, sample_summed_velocity
from poe_backend.sampling.budget import planned_nfe, transport_substeps
from poe_backend.sampling.schedules import log_snr_levels, shifted_levels
from poe_backend.toy.spec import parse_spec
from tests.toy import products

POINT = torch.tensor([0.7, -1.3], dtype=torch.float64)
SAMPLERS = {"fkc": sample_fkc, "fkc-exponential": partial(sample_fkc, transport="exponential"), "annealed_langevin": sample_annealed_langevin}


def _point_mass_product(num_experts: int = 2) -> ProductOfExperts:
    """Experts that are each (numerically) a point mass at ``POINT``: variance 1e-24."""
    mixture = GaussianMixture(torch.ones(1, dtype=torch.float64), POINT[None], 1e-24 * torch.eye(2, dtype=torch.float64)[None])
    return ProductOfExperts([Factor(GaussianMixtureExpert(mixture)) for _ in range(num_experts)])


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("levels", [8, 28])
def test_point_mass_product_returns_the_point_exactly(name: str, levels: int) -> None:
    """With the old stochastic last step the output was the point plus σ_last · z
    (σ_last ≈ 0.01-0.3): far outside 1e-9."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(16, 2, generator=generator, dtype=torch.float64)
    result = SAMPLERS[name](_point_mass_product(), noise, shifted_levels(levels, 1.0, t_max=0.999), generator=generator, langevin_steps=2)
    assert torch.allclose(result.particles, POINT.expand(16, 2), atol=1e-9, rtol=0.0)


@pytest.mark.parametrize("name", ["fkc", "fkc-exponential", "annealed_langevin", "summed_velocity"])
@pytest.mark.parametrize("levels", [log_snr_levels(8), log_snr_levels(28), shifted_levels(8, 1.0, t_max=0.999), shifted_levels(28, 1.0, t_max=0.999)])
def test_planned_nfe_equals_the_runs_count(name: str, levels: list[float]) -> None:
    spec = parse_spec(products.two_experts_2d())
    generator = torch.Generator().manual_seed(0)
    product = spec.product()
    function = {**SAMPLERS, "summed_velocity": sample_summed_velocity}[name]
    options = {} if name == "summed_velocity" else {"langevin_steps": 2}
    result = function(product, torch.randn(4, 2, generator=generator, dtype=torch.float64), levels, generator=generator, **options)
    sampler, transport = (name.split("-") + ["euler"])[:2]
    assert result.nfe == planned_nfe(sampler, levels, num_experts=2, langevin_steps=options.get("langevin_steps", 0), transport=transport)


def test_no_substeps_when_gaps_are_stable() -> None:
    """One expert (Σλ = 1) never needs substeps; two experts on 8 log-SNR levels do."""
    assert transport_substeps(log_snr_levels(8), 1.0) == 0
    assert transport_substeps(log_snr_levels(8), 2.0) > 0


def test_fkc_reports_its_substeps() -> None:
    spec = parse_spec(products.two_experts_2d())
    generator = torch.Generator().manual_seed(0)
    levels = log_snr_levels(8)
    result = sample_fkc(spec.product(), torch.randn(4, 2, generator=generator, dtype=torch.float64), levels, generator=generator, langevin_steps=1)
    assert result.substeps == transport_substeps(levels, 2.0) > 0
    assert result.stats()["substeps"] == result.substeps


def test_exponential_transport_costs_what_its_levels_say() -> None:
    """No substeps: two experts on 8 log-SNR levels cost 1 + 7 · (1 + L) per expert."""
    spec = parse_spec(products.two_experts_2d())
    generator = torch.Generator().manual_seed(0)
    levels = log_snr_levels(8)
    result = sample_fkc(spec.product(), torch.randn(4, 2, generator=generator, dtype=torch.float64), levels, generator=generator, langevin_steps=1, transport="exponential")
    assert result.substeps == 0
    assert result.nfe == 2 * (1 + (len(levels) - 2) * 2)


@pytest.mark.parametrize("options", [{}, {"transport": "exponential", "langevin_steps": 1}])
def test_task_progress_plans_the_samplers_own_defaults(options: dict) -> None:
    """``tasks.base.run_sampler`` reports the planned cost before the run; options it is
    not given count at the sampler's defaults (4 Langevin steps, Euler transport), not 0."""
    from poe_backend.tasks.base import TaskContext, TaskParams, run_sampler

    reports = []
    context = TaskContext(bundle=None, params=TaskParams(), out_dir=None, callback=reports.append)
    generator = torch.Generator().manual_seed(0)
    levels = log_snr_levels(8)
    result = run_sampler("fkc", parse_spec(products.two_experts_2d()).product(), torch.randn(4, 2, generator=generator, dtype=torch.float64), levels, generator, context, **options)
    assert {report.planned_nfe for report in reports} == {result.nfe}

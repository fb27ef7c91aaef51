"""Autoregressive annealing on exact answers: chunks are the coordinates of a 2-D product."""

import torch

from poe_backend.toy.metrics import noise_floor, sliced_wasserstein
from poe_backend.toy.run import run_toy
from poe_backend.toy.spec import parse_spec
from tests.toy import products

NUM_SAMPLES = 2000


def test_autoregressive_with_gibbs_sweeps_reaches_gaussian_product() -> None:
    spec = parse_spec(products.gaussians_with_lambda_2d())
    generator = torch.Generator().manual_seed(3)
    exact = spec.exact_samples(NUM_SAMPLES, generator)
    floor = noise_floor(lambda n: spec.exact_samples(n, generator), NUM_SAMPLES)
    run = run_toy(spec, num_particles=NUM_SAMPLES, seed=1, sampler="autoregressive")
    assert sliced_wasserstein(run.samples, exact) < 2.5 * floor
    assert run.samples.shape == (NUM_SAMPLES, 2)


def test_gibbs_sweeps_correct_the_first_pass(monkeypatch) -> None:
    """The first pass samples chunk 0 from the product of the experts' marginals, not the
    target's marginal; sweeps conditioned on the other chunk fix it."""
    from poe_backend.toy import run as toy_run

    spec = parse_spec(products.gaussians_with_lambda_2d())
    generator = torch.Generator().manual_seed(4)
    exact = spec.exact_samples(NUM_SAMPLES, generator)
    with_sweeps = sliced_wasserstein(run_toy(spec, num_particles=NUM_SAMPLES, seed=2, sampler="autoregressive").samples, exact)
    monkeypatch.setattr(toy_run, "AUTOREGRESSIVE_SWEEPS", 0)
    without = sliced_wasserstein(run_toy(spec, num_particles=NUM_SAMPLES, seed=2, sampler="autoregressive").samples, exact)
    assert with_sweeps < 0.5 * without

"""Autoregressive annealing on exact answers: chunks are the coordinates of a 2-D product."""

import torch

from benchmarks.miniatures.metrics import noise_floor, sliced_wasserstein
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


def test_the_next_chunks_weights_correct_the_first_chunk(monkeypatch) -> None:
    """The first chunk alone is drawn from the product of the experts' marginals
    (coordinate 0: mean 0.8, variance 0.4), not the target's marginal (1.073, 0.270). The
    next chunk's Feynman-Kac weights estimate the normaliser of its conditional product
    given chunk 0, and resampling by them corrects chunk 0, with no Gibbs sweep."""
    from poe_backend.toy import run as toy_run

    spec = parse_spec(products.gaussians_with_lambda_2d())
    target = spec.exact_product()
    mean, variance = float(target.means[0, 0]), float(target.covariances[0, 0, 0])
    monkeypatch.setattr(toy_run, "AUTOREGRESSIVE_SWEEPS", 0)
    chunk = run_toy(spec, num_particles=NUM_SAMPLES, seed=2, sampler="autoregressive").samples[:, 0]
    assert abs(float(chunk.mean()) - mean) < 0.05 < abs(0.8 - mean)
    assert abs(float(chunk.var()) / variance - 1.0) < 0.15 < abs(0.4 / variance - 1.0)

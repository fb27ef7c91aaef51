"""Samplers against exact answers: sliced Wasserstein distance to exact product samples must
sit near the two-sample noise floor for the exact paths (AIS with energies; Feynman-Kac
weights, score-only), and the naive summed-velocity ODE must be clearly worse.

Tolerances: exact paths within 2x the mean noise floor (8 pairs of exact sets of the same
size), as a mean over three sampler seeds (one run's ratio varies by about ±0.5 even for
exact samples); naive at least 3x. Seeds are fixed.

Each case's exact samples and noise floor (16 exact sets, 8 distances: ~6 s) and its
annealed runs (three seeds) are computed once for the module (:func:`reference`,
:func:`annealed`): the Feynman-Kac comparison reuses the score-only runs of its case, which
are the ``fkc`` sampler's runs draw for draw (the toy's ``fkc`` uses no energy)."""

from __future__ import annotations

import functools
from typing import Callable

import pytest
import torch

from benchmarks.miniatures.metrics import noise_floor, sliced_wasserstein
from poe_backend.toy.run import ToyRun, run_toy
from poe_backend.toy.spec import ToySpec, parse_spec
from tests.toy import products

NUM_SAMPLES = 2000
EXACT_FACTOR = 2.0
NAIVE_FACTOR = 3.0
SEEDS = (5, 6, 7)

CASES = {
    "2d-two-experts": products.two_experts_2d(),
    "2d-three-experts": products.three_experts_2d(),
    "2d-disc": products.with_disc(products.two_experts_2d(), [1.5, 0.0], 1.0),
    "2d-three-experts-disc": products.with_disc(products.three_experts_2d(), [0.5, -0.5], 0.8),
    "2d-gaussians-lambda": products.gaussians_with_lambda_2d(),
    "8d-two-experts": products.two_experts_8d(),
}

Reference = tuple[ToySpec, torch.Tensor, float]  # the spec, NUM_SAMPLES exact samples (N, D), the noise floor
Annealed = tuple[ToyRun, float]  # the first seed's run, the mean distance to the exact samples over SEEDS


def _reference(name: str) -> Reference:
    spec = parse_spec(CASES[name])
    generator = torch.Generator().manual_seed(11)
    exact = spec.exact_samples(NUM_SAMPLES, generator)
    floor = noise_floor(lambda n: spec.exact_samples(n, generator), NUM_SAMPLES)
    return spec, exact, floor


@pytest.fixture(scope="module")
def reference() -> Callable[[str], Reference]:
    """``reference(case)``: the case's spec, exact samples and noise floor, once per module."""
    return functools.cache(_reference)


@pytest.fixture(scope="module")
def annealed(reference) -> Callable[[str, bool], Annealed]:
    """``annealed(case, score_only)``: the default annealed sampler (AIS, or the score-only
    Feynman-Kac sampler) at each of SEEDS, once per module."""

    @functools.cache
    def runs(name: str, score_only: bool) -> Annealed:
        spec, exact, _ = reference(name)
        done = [run_toy(spec, num_particles=NUM_SAMPLES, seed=seed, score_only=score_only) for seed in SEEDS]
        return done[0], _mean_distance(done, exact)

    return runs


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def case(request) -> str:
    return request.param


@pytest.mark.slow
@pytest.mark.parametrize("score_only", [False, True], ids=["energy-ais", "score-only-fkc"])
def test_annealed_sampler_reaches_noise_floor(case, score_only: bool, reference, annealed) -> None:
    spec, _, floor = reference(case)
    first, distance = annealed(case, score_only)
    per_expert = first.result.nfe / len(spec.mixtures)
    assert per_expert <= 500, "defaults must stay within 500 NFE per particle per expert"
    assert first.result.path.startswith("fkc" if score_only else "ais")
    assert distance < EXACT_FACTOR * floor, f"{distance:.4f} vs floor {floor:.4f}"


def _mean_distance(runs: list[ToyRun], exact: torch.Tensor) -> float:
    return sum(sliced_wasserstein(run.samples, exact) for run in runs) / len(runs)


@pytest.mark.slow
def test_naive_baseline_is_clearly_worse(case, reference) -> None:
    spec, exact, floor = reference(case)
    run = run_toy(spec, num_particles=NUM_SAMPLES, seed=5, sampler="naive")
    assert sliced_wasserstein(run.samples, exact) > NAIVE_FACTOR * floor


def test_feynman_kac_weights_beat_the_paper_sampler_on_a_reward_product(reference, annealed) -> None:
    """The published annealed Langevin sampler (no transport weights, resampling by reward
    increments only) lands clearly farther from the disc-restricted three-expert product
    than the Feynman-Kac weighted sampler at the same NFE (measured, mean of three seeds: 3.05x vs 1.25x the noise floor)."""
    spec, exact, floor = reference("2d-three-experts-disc")
    paper = _mean_distance([run_toy(spec, num_particles=NUM_SAMPLES, seed=seed, sampler="langevin") for seed in SEEDS], exact)
    first, weighted = annealed("2d-three-experts-disc", True)
    assert first.result.path.startswith("fkc")
    assert weighted < EXACT_FACTOR * floor
    assert paper > 1.5 * weighted


def test_samples_respect_the_disc() -> None:
    spec = parse_spec(CASES["2d-disc"])
    run = run_toy(spec, num_particles=500, seed=1)
    assert bool(spec.rewards[0].contains(run.samples).all())


def test_single_expert_baseline_samples_that_expert() -> None:
    spec = parse_spec(products.two_experts_2d())
    generator = torch.Generator().manual_seed(3)
    exact = spec.mixtures[1].sample(NUM_SAMPLES, generator)
    floor = noise_floor(lambda n: spec.mixtures[1].sample(n, generator), NUM_SAMPLES)
    run = run_toy(spec, num_particles=NUM_SAMPLES, seed=2, sampler="single:1")
    assert sliced_wasserstein(run.samples, exact) < EXACT_FACTOR * floor

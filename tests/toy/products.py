"""Products of Gaussian mixtures with exact answers, shared by the sampler tests and the
accuracy benchmark."""

from __future__ import annotations

import numpy as np


def _isotropic(dimension: int, variance: float) -> list[list[float]]:
    return (np.eye(dimension) * variance).tolist()


def _random_covariance(rng: np.random.Generator, dimension: int, low: float, high: float) -> list[list[float]]:
    rotation, _ = np.linalg.qr(rng.normal(size=(dimension, dimension)))
    return (rotation @ np.diag(rng.uniform(low, high, dimension)) @ rotation.T).tolist()


def two_experts_2d() -> dict:
    """Bimodal x bimodal with correlated components: four product modes, unequal weights."""
    return {
        "experts": [
            {"type": "gmm", "weights": [0.5, 0.5], "means": [[-2, 0], [2, 0]], "covs": [_isotropic(2, 0.5)] * 2},
            {"type": "gmm", "weights": [0.3, 0.7], "means": [[-1.5, 1], [1.5, -0.5]], "covs": [[[1, 0.3], [0.3, 0.8]], _isotropic(2, 1.2)]},
        ]
    }


def three_experts_2d() -> dict:
    spec = two_experts_2d()
    spec["experts"].append({"type": "gmm", "weights": [0.6, 0.4], "means": [[0, 1.5], [0.5, -1.5]], "covs": [_isotropic(2, 2.0), [[1.5, -0.4], [-0.4, 1.0]]]})
    return spec


def with_disc(spec: dict, center: list[float], radius: float) -> dict:
    return {**spec, "rewards": [{"type": "disc", "center": center, "radius": radius}]}


def gaussians_with_lambda_2d() -> dict:
    """Single Gaussians raised to λ = 2 and 0.5: exact product N(μ, (Σ λ_i Σ_i^-1)^-1)."""
    return {
        "experts": [
            {"type": "gmm", "weights": [1.0], "means": [[1, 0]], "covs": [[[1, 0.8], [0.8, 1]]], "lambda": 2.0},
            {"type": "gmm", "weights": [1.0], "means": [[0, 1]], "covs": [[[1, -0.3], [-0.3, 0.5]]], "lambda": 0.5},
        ]
    }


def two_experts_8d(seed: int = 0) -> dict:
    """8-D mixtures with random rotated covariances, two components each."""
    rng = np.random.default_rng(seed)
    experts = []
    for _ in range(2):
        means = rng.normal(scale=1.5, size=(2, 8)).tolist()
        experts.append({"type": "gmm", "weights": [0.4, 0.6], "means": means, "covs": [_random_covariance(rng, 8, 0.3, 1.5) for _ in range(2)]})
    return {"experts": experts}


def barely_overlapping_2d() -> dict:
    """Experts whose modes barely overlap: the product lives in their tails."""
    return {
        "experts": [
            {"type": "gmm", "weights": [0.5, 0.5], "means": [[-2.5, 0], [0, 2.5]], "covs": [_isotropic(2, 0.3)] * 2},
            {"type": "gmm", "weights": [0.5, 0.5], "means": [[2.5, 0], [0, -2.5]], "covs": [_isotropic(2, 0.3)] * 2},
        ]
    }

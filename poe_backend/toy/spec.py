"""Toy problem specs: products of Gaussian mixtures in D dimensions, with disc rewards.

JSON format (``poe-backend toy sample --spec SPEC.json``)::

    {"experts": [{"type": "gmm", "weights": [K], "means": [[D] * K], "covs": [[[D] * D] * K],
                  "lambda": 1.0}, ...],
     "rewards": [{"type": "disc", "center": [D], "radius": r}]}

Every check raises :class:`SpecError` whose message starts with the offending field, e.g.
``experts[1].covs[0]: not positive definite``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from poe_backend.families.analytic.disc import DiscReward
from poe_backend.families.analytic.gmm import GaussianMixture, GaussianMixtureExpert, product_of_mixtures
from poe_backend.sampling import Factor, ProductOfExperts

DTYPE = torch.float64


class SpecError(ValueError):
    """A toy spec that cannot be used; the message names the field."""


@dataclass(frozen=True)
class ToySpec:
    """Parsed spec: mixtures with their exponents, and disc rewards."""

    mixtures: list[GaussianMixture]
    exponents: list[float]
    rewards: list[DiscReward]

    @property
    def dimension(self) -> int:
        return self.mixtures[0].dimension

    def product(self) -> ProductOfExperts:
        """A fresh product (its NFE counter at zero)."""
        factors = [Factor(GaussianMixtureExpert(m), weight) for m, weight in zip(self.mixtures, self.exponents)]
        return ProductOfExperts(factors, self.rewards)

    def exact_product(self) -> GaussianMixture:
        """The exact normalised product of the generative experts (rewards excluded)."""
        return product_of_mixtures([m.power(weight) for m, weight in zip(self.mixtures, self.exponents)])

    def exact_samples(self, num_samples: int, generator: torch.Generator, max_rounds: int = 1000) -> torch.Tensor:
        """Exact samples of the full target, rewards included (rejection on the discs)."""
        target, kept, count = self.exact_product(), [], 0
        for _ in range(max_rounds):
            draws = target.sample(max(num_samples, 1024), generator)
            for reward in self.rewards:
                draws = draws[reward.contains(draws)]
            kept.append(draws)
            count += draws.shape[0]
            if count >= num_samples:
                return torch.cat(kept)[:num_samples]
        raise RuntimeError("the rewards reject almost every sample of the product")


def load_spec(path: str | Path) -> ToySpec:
    """Read and validate a spec file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise SpecError(f"spec: cannot read {path} ({error})") from None
    return parse_spec(data)


def parse_spec(data: Any) -> ToySpec:
    """Validate a spec dictionary (see module docstring)."""
    _require(isinstance(data, dict), "spec", "must be a JSON object")
    experts = data.get("experts")
    _require(isinstance(experts, list) and len(experts) > 0, "experts", "must be a non-empty list")
    mixtures, exponents = [], []
    for index, expert in enumerate(experts):
        mixture, exponent = _parse_expert(expert, f"experts[{index}]")
        if mixtures:
            _require(mixture.dimension == mixtures[0].dimension, f"experts[{index}].means", f"dimension {mixture.dimension} differs from experts[0]'s {mixtures[0].dimension}")
        mixtures.append(mixture)
        exponents.append(exponent)
    rewards = data.get("rewards", [])
    _require(isinstance(rewards, list), "rewards", "must be a list")
    parsed_rewards = [_parse_reward(reward, f"rewards[{index}]", mixtures[0].dimension) for index, reward in enumerate(rewards)]
    unknown = set(data) - {"experts", "rewards"}
    _require(not unknown, sorted(unknown)[0] if unknown else "", "unknown field")
    return ToySpec(mixtures, exponents, parsed_rewards)


def _parse_expert(expert: Any, where: str) -> tuple[GaussianMixture, float]:
    _require(isinstance(expert, dict), where, "must be an object")
    _require(expert.get("type") == "gmm", f"{where}.type", f"unknown expert type {expert.get('type')!r} (known: gmm)")
    weights = _tensor(expert.get("weights"), f"{where}.weights", 1)
    count = weights.shape[0]
    _require(count > 0 and bool((weights > 0).all()), f"{where}.weights", "must be positive")
    _require(abs(float(weights.sum()) - 1.0) < 1e-6, f"{where}.weights", f"must sum to 1, sum to {float(weights.sum()):.6g}")
    means = _tensor(expert.get("means"), f"{where}.means", 2)
    _require(means.shape[0] == count and means.shape[1] > 0, f"{where}.means", f"must be {count} vectors, one per weight")
    dimension = means.shape[1]
    covariances = _tensor(expert.get("covs"), f"{where}.covs", 3)
    _require(covariances.shape == (count, dimension, dimension), f"{where}.covs", f"must be {count} matrices of {dimension}x{dimension}")
    for k in range(count):
        matrix = covariances[k]
        _require(bool(torch.allclose(matrix, matrix.T, atol=1e-9)), f"{where}.covs[{k}]", "not symmetric")
        _require(bool(torch.linalg.eigvalsh(matrix).min() > 0), f"{where}.covs[{k}]", "not positive definite")
    exponent = expert.get("lambda", 1.0)
    _require(isinstance(exponent, (int, float)) and not isinstance(exponent, bool) and math.isfinite(exponent) and exponent > 0, f"{where}.lambda", "must be a positive number")
    _require(exponent == 1.0 or count == 1, f"{where}.lambda", "must be 1 for a mixture of several components (p^λ is then no mixture)")
    unknown = set(expert) - {"type", "weights", "means", "covs", "lambda"}
    _require(not unknown, f"{where}.{sorted(unknown)[0]}" if unknown else where, "unknown field")
    return GaussianMixture(weights, means, covariances), float(exponent)


def _parse_reward(reward: Any, where: str, dimension: int) -> DiscReward:
    _require(isinstance(reward, dict), where, "must be an object")
    _require(reward.get("type") == "disc", f"{where}.type", f"unknown reward type {reward.get('type')!r} (known: disc)")
    center = _tensor(reward.get("center"), f"{where}.center", 1)
    _require(center.shape[0] == dimension, f"{where}.center", f"must have {dimension} coordinates")
    radius = reward.get("radius")
    _require(isinstance(radius, (int, float)) and not isinstance(radius, bool) and math.isfinite(radius) and radius > 0, f"{where}.radius", "must be a positive finite number")
    return DiscReward(center, float(radius))


def _tensor(value: Any, where: str, ndim: int) -> torch.Tensor:
    try:
        tensor = torch.tensor(value, dtype=DTYPE)
    except (TypeError, ValueError, RuntimeError):
        raise SpecError(f"{where}: must be a rectangular array of numbers") from None
    _require(tensor.dim() == ndim, where, f"must be a {ndim}-d array, got {tensor.dim()}-d")
    _require(bool(torch.isfinite(tensor).all()), where, "must be finite")
    return tensor


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise SpecError(f"{field}: {message}")

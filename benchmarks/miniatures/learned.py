"""Learned experts whose exact product is known: flow-matching nets trained on samples of
Gaussian mixtures.

A :class:`LearnedCase` is a toy spec (the true mixtures, so the exact product is closed
form) plus how to train one :class:`~benchmarks.miniatures.flow_net.VelocityNet` per mixture. The
learned product then carries real model error (its velocities are regressed, imperfect and
not the gradient of anything), as a neural expert's do; comparing its samples with the exact
product measures model error and sampler error together, and each expert's own samples
against its own mixture measure the model error alone.

Trained weights are cached under ``data_dir() / "learned"``, one file per expert named by a
hash of its mixture and training configuration.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from poe_backend.families.analytic.gmm import GaussianMixture
from poe_backend.models.specs import data_dir
from poe_backend.sampling import Factor, ProductOfExperts
from benchmarks.miniatures.flow_net import LearnedExpert, VelocityNet, cache_name, load_or_train, train_velocity
from poe_backend.toy.spec import ToySpec, parse_spec

CACHE_VERSION = 1  # bump when the net or its training changes meaning


@dataclass(frozen=True)
class Training:
    """How one expert is trained: net size, Adam steps, batch, learning rate, and the
    number of samples drawn from its mixture (the training set)."""

    width: int = 128
    depth: int = 3
    steps: int = 3000
    batch_size: int = 512
    learning_rate: float = 2e-3
    samples: int = 65536
    seed: int = 0


@dataclass(frozen=True)
class LearnedCase:
    """A product of Gaussian mixtures (``spec``) whose experts are learned by ``training``."""

    name: str
    spec: ToySpec
    training: Training

    @property
    def dimension(self) -> int:
        return self.spec.dimension

    def experts(self, directory: Path | None = None) -> list[LearnedExpert]:
        """One learned expert per mixture, trained on first use and cached in ``directory``
        (default ``data_dir() / "learned"``)."""
        directory = directory or data_dir() / "learned"
        return [LearnedExpert(self._net(index, mixture, directory)) for index, mixture in enumerate(self.spec.mixtures)]

    def product(self, experts: list[LearnedExpert]) -> ProductOfExperts:
        """A fresh product of ``experts`` (NFE counter at zero) with the spec's exponents."""
        return ProductOfExperts([Factor(expert, weight) for expert, weight in zip(experts, self.spec.exponents)])

    def exact_samples(self, num_samples: int, generator: torch.Generator) -> torch.Tensor:
        """Exact samples ``(N, D)`` of the true product."""
        return self.spec.exact_samples(num_samples, generator)

    def _net(self, index: int, mixture: GaussianMixture, directory: Path) -> VelocityNet:
        training = self.training
        key = {"version": CACHE_VERSION, "training": asdict(training), "weights": mixture.weights.tolist(), "means": mixture.means.tolist(), "covariances": mixture.covariances.tolist()}

        def build() -> VelocityNet:
            torch.manual_seed(training.seed + index)
            return VelocityNet(mixture.dimension, width=training.width, depth=training.depth)

        def train(net: VelocityNet) -> None:
            data = mixture.sample(training.samples, torch.Generator().manual_seed(training.seed + 1000 + index))
            train_velocity(net, data, steps=training.steps, batch_size=training.batch_size, learning_rate=training.learning_rate, seed=training.seed + index)

        return load_or_train(directory / cache_name(f"{self.name}-expert{index}", key), build, train)


def many_modes_2d() -> LearnedCase:
    """A 5×5 grid of tight modes (std 0.25, spacing 1.25) × a broad, tilted bimodal expert:
    25 product modes whose weights the broad expert sets unevenly."""
    grid = [[1.25 * i, 1.25 * j] for i in range(-2, 3) for j in range(-2, 3)]
    data = {
        "experts": [
            {"type": "gmm", "weights": [1 / 25] * 25, "means": grid, "covs": [[[0.0625, 0.0], [0.0, 0.0625]]] * 25},
            {"type": "gmm", "weights": [0.35, 0.65], "means": [[-1.2, -0.8], [1.4, 1.0]], "covs": [[[1.2, 0.3], [0.3, 0.8]], [[0.9, 0.0], [0.0, 0.9]]]},
        ]
    }
    return LearnedCase("many-modes-2d", parse_spec(data), Training())


def far_modes_2d() -> LearnedCase:
    """The barely-overlapping product of the analytic benchmark (modes at distance 2.5 from
    the origin, variance 0.3): the product lives in the experts' tails, where their
    training data is thin."""
    data = {
        "experts": [
            {"type": "gmm", "weights": [0.5, 0.5], "means": [[-2.5, 0], [0, 2.5]], "covs": [[[0.3, 0.0], [0.0, 0.3]]] * 2},
            {"type": "gmm", "weights": [0.5, 0.5], "means": [[2.5, 0], [0, -2.5]], "covs": [[[0.3, 0.0], [0.0, 0.3]]] * 2},
        ]
    }
    return LearnedCase("far-modes-2d", parse_spec(data), Training())


def high_dimensional(dimension: int = 32, training: Training | None = None, seed: int = 0) -> LearnedCase:
    """Two experts in ``dimension`` ≥ 2 dimensions, each a bimodal mixture (weights 0.4/0.6,
    modes ±1.5 apart along e1 for expert 0, e2 for expert 1) around its own random centre
    (N(0, 0.5²) per coordinate), with a shared randomly rotated covariance of eigenvalues in
    [0.5, 1.5]: four product modes. Per coordinate the experts disagree equally at every
    dimension, so the Feynman-Kac log-weights' spread grows with ``dimension`` alone.
    Default net: width max(256, 2·dimension), depth 3."""
    rng = np.random.default_rng(seed)
    experts = []
    for index in range(2):
        rotation, _ = np.linalg.qr(rng.normal(size=(dimension, dimension)))
        covariance = rotation @ np.diag(rng.uniform(0.5, 1.5, dimension)) @ rotation.T
        centre, offset = rng.normal(scale=0.5, size=dimension), np.zeros(dimension)
        offset[index] = 1.5
        covariance = ((covariance + covariance.T) / 2).tolist()
        experts.append({"type": "gmm", "weights": [0.4, 0.6], "means": [(centre - offset).tolist(), (centre + offset).tolist()], "covs": [covariance, covariance]})
    training = training or Training(width=max(256, 2 * dimension), learning_rate=1e-3)
    return LearnedCase(f"gaussian-{dimension}d", parse_spec({"experts": experts}), training)


def cases() -> list[LearnedCase]:
    """The benchmark's cases: 2-D many modes, 32-D, barely overlapping."""
    return [many_modes_2d(), high_dimensional(32), far_modes_2d()]

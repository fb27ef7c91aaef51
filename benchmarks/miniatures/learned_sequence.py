"""The sim-to-video task in miniature: a learned autoregressive expert × render Gaussians,
with an exact answer.

``sim2video_ar`` multiplies FramePack, which draws each video section given the sections
before it, by ``N(render section, s² I)`` per section, one section at a time
(:func:`poe_backend.sampling.autoregressive.sample_autoregressive`, SMC over histories,
Gibbs sweeps that re-draw a section given the sections before it). Here a sequence is a
point of R^D whose coordinates are the sections:

* the *sequence expert* is a Gaussian mixture over R^D (AR(1)-correlated components)
  learned as one flow net for ``p(x_j | x_<j)`` (condition: the earlier coordinates
  zero-padded to D - 1, and the one-hot position j), the analogue of FramePack;
* the *render expert* of section j is :class:`~poe_backend.families.analytic.render_gaussian.RenderGaussianExpert`
  around ``r_j``, the task's own expert; the renders are the mixture's mean plus render
  noise, between the two components, so the target keeps both (the simulation fits either
  motion, as a rough render does) and the mode weights test the sampler.

The target ``p(x) Π_j N(x_j; r_j, s²)^w`` is a Gaussian mixture
(:func:`~poe_backend.families.analytic.gmm.product_of_mixtures`), so runs are scored against exact
samples; the same runs with the mixture's exact conditionals tell sampler error from model
error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from poe_backend.families.analytic.gmm import GaussianMixture, GaussianMixtureExpert, product_of_mixtures
from poe_backend.families.analytic.render_gaussian import RenderGaussianExpert
from poe_backend.models.specs import data_dir
from poe_backend.sampling import Factor, ProductOfExperts
from benchmarks.miniatures.flow_net import LearnedExpert, VelocityNet, cache_name, load_or_train, train_velocity
from benchmarks.miniatures.learned import Training

DTYPE = torch.float64
ProductFactory = Callable[[int, list[Tensor | None]], ProductOfExperts]


@dataclass(frozen=True)
class SequenceCase:
    """A mixture over ``D`` sections, the renders ``(D,)``, the render expert's ``std`` and
    power (the task's ``render_std`` and ``render_weight``)."""

    mixture: GaussianMixture
    renders: Tensor
    render_std: float
    render_weight: float
    training: Training  # samples: draws of the mixture, each giving one row per position

    @property
    def sections(self) -> int:
        return self.mixture.dimension

    def exact_target(self) -> GaussianMixture:
        """``p(x) · N(x; r, s² I)^w`` normalised."""
        render = GaussianMixture(torch.ones(1, dtype=DTYPE), self.renders[None], torch.eye(self.sections, dtype=DTYPE)[None] * self.render_std**2 / self.render_weight)
        return product_of_mixtures([self.mixture, render])

    def net(self, directory: Path | None = None) -> VelocityNet:
        """The learned ``p(x_j | x_<j)``, trained on first use and cached in ``directory``
        (default ``data_dir() / "learned"``)."""
        directory = directory or data_dir() / "learned"
        training, sections = self.training, self.sections
        key = {"training": asdict(training), "weights": self.mixture.weights.tolist(), "means": self.mixture.means.tolist(), "covariances": self.mixture.covariances.tolist()}

        def build() -> VelocityNet:
            torch.manual_seed(training.seed)
            return VelocityNet(1, 2 * sections - 1, training.width, training.depth)

        def train(net: VelocityNet) -> None:
            draws = self.mixture.sample(training.samples, torch.Generator().manual_seed(training.seed + 1000)).float()
            rows = torch.cat([draws[:, j : j + 1] for j in range(sections)])
            conditions = torch.cat([history_condition(draws[:, :j], j, sections) for j in range(sections)])
            train_velocity(net, rows, conditions, steps=training.steps, batch_size=training.batch_size, learning_rate=training.learning_rate, seed=training.seed)

        return load_or_train(directory / cache_name("sequence", key), build, train)

    def factory(self, net: VelocityNet | None) -> ProductFactory:
        """``make_product(index, chunks)`` for :func:`sample_autoregressive`: the sequence
        expert of section ``index`` given the sections before it (the learned ``net``, or the
        mixture's exact conditional when None) times that section's render expert. As in the
        task, a Gibbs sweep's product sees only the earlier sections."""

        def make_product(index: int, chunks: list[Tensor | None]) -> ProductOfExperts:
            history = chunks[:index]
            if any(chunk is None for chunk in history):
                raise RuntimeError(f"section {index}: the sequence expert needs every earlier section")
            values = torch.cat(history, dim=1) if history else None
            if net is None:
                sequence = GaussianMixtureExpert(self.mixture.conditional([index], list(range(index)), values))
            else:
                condition = history_condition(values if history else torch.zeros(1, 0, dtype=DTYPE), index, self.sections)
                sequence = LearnedExpert(net, condition if history else condition[0])  # (C,): shared by every particle
            render = RenderGaussianExpert(self.renders[index : index + 1], self.render_std)
            return ProductOfExperts([Factor(sequence), Factor(render, self.render_weight)])

        return make_product


def history_condition(history: Tensor, index: int, sections: int) -> Tensor:
    """The sequence net's condition ``(N, 2D - 1)``: the earlier sections ``history``
    ``(N, index)`` zero-padded to ``D - 1`` values, then the one-hot position ``index``."""
    count = history.shape[0]
    padded = torch.zeros(count, sections - 1, dtype=history.dtype)
    padded[:, :index] = history
    position = torch.zeros(count, sections, dtype=history.dtype)
    position[:, index] = 1.0
    return torch.cat([padded, position], dim=1)


def default_case(sections: int = 4, seed: int = 0) -> SequenceCase:
    """Two AR(1) components (correlation 0.8 between neighbours, variance 1) with opposite
    drifts, weights 0.4 / 0.6; renders the mixture's mean plus N(0, 0.3²) noise; the task's
    render expert defaults (``render_std`` 0.5, ``render_weight`` 1)."""
    lags = np.abs(np.subtract.outer(np.arange(sections), np.arange(sections)))
    covariance = torch.tensor(0.8**lags, dtype=DTYPE)
    ramp = torch.linspace(-1.0, 1.0, sections, dtype=DTYPE)
    means = torch.stack([ramp - 0.5, 0.5 - ramp])
    mixture = GaussianMixture(torch.tensor([0.4, 0.6], dtype=DTYPE), means, torch.stack([covariance, covariance]))
    generator = torch.Generator().manual_seed(seed)
    renders = mixture.weights @ means + 0.3 * torch.randn(sections, generator=generator, dtype=DTYPE)
    return SequenceCase(mixture, renders, render_std=0.5, render_weight=1.0, training=Training(samples=32768))

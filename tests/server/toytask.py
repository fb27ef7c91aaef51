"""A small real task for the server tests until ``poe_backend.tasks.toy2d`` is on main:
the FKC sampler on the product of two 2-D Gaussian mixtures, written as a scatter PNG.
``register()`` puts it under the name ``toy2d`` only when the real one is missing."""

from __future__ import annotations

import importlib

import torch
from PIL import Image, ImageDraw
from pydantic import Field

from poe_backend.experts.gmm import GaussianMixture, GaussianMixtureExpert
from poe_backend.sampling import Factor, ProductOfExperts, sample_fkc
from poe_backend.sampling.schedules import linear_levels
from poe_backend.tasks import TASK_CLASSES
from poe_backend.tasks.base import Task, TaskContext, TaskParams, TaskResult


class ToyParams(TaskParams):
    num_particles: int = Field(64, ge=1, le=4096, description="particles")
    num_levels: int = Field(10, ge=2, le=100000, description="annealing levels")
    langevin_steps: int = Field(1, ge=0, le=50)
    seed: int = 0


def _mixture(means: list[list[float]], std: float) -> GaussianMixture:
    means_tensor = torch.tensor(means, dtype=torch.float64)
    count = means_tensor.shape[0]
    return GaussianMixture(torch.full((count,), 1.0 / count, dtype=torch.float64), means_tensor, torch.eye(2, dtype=torch.float64).repeat(count, 1, 1) * std**2)


class TestToy2DTask(Task):
    name = "toy2d"
    Params = ToyParams
    kind = "image"

    def run(self, context: TaskContext) -> TaskResult:
        params: ToyParams = context.params
        product = ProductOfExperts([
            Factor(GaussianMixtureExpert(_mixture([[-2, 0], [2, 0]], 0.6))),
            Factor(GaussianMixtureExpert(_mixture([[2, 1], [2, -1], [-2, 2]], 0.8))),
        ])
        generator = torch.Generator().manual_seed(params.seed)
        noise = torch.randn(params.num_particles, 2, generator=generator, dtype=torch.float64)
        levels = linear_levels(params.num_levels, t_max=0.99)
        result = sample_fkc(product, noise, levels, generator=generator, langevin_steps=params.langevin_steps, callback=context.callback, should_stop=context.should_stop)
        image = Image.new("RGB", (128, 128), "white")
        draw = ImageDraw.Draw(image)
        for x, y in result.particles.tolist():
            px, py = 64 + x * 14, 64 - y * 14
            draw.ellipse([px - 1, py - 1, px + 1, py + 1], fill="black")
        path = context.out_dir / "samples.png"
        image.save(path)
        manifest = {"task": self.name, "params": params.model_dump(), "sampler": result.stats()}
        return TaskResult("image", "samples", {"samples": path}, manifest)


def register() -> None:
    """Use this class as ``toy2d`` unless the real task module exists."""
    try:
        importlib.import_module("poe_backend.tasks.toy2d")
    except ModuleNotFoundError:
        TASK_CLASSES["toy2d"] = "tests.server.toytask:TestToy2DTask"

"""The paper's two 2D illustrations (project page, "linear interpolants" and "with a
discriminative expert"), plus the naive baseline for contrast.

Two Gaussian-mixture experts (blue and orange contours of their noised marginals at each
level) are sampled with T = 5 annealing levels: per level an MCMC-init step, then Langevin
steps; with a disc-shaped discriminative expert (red circle), particles are resampled by
reward after each level's MCMC steps.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from poe_backend.sampling import Progress, samplers  # noqa: E402
from poe_backend.sampling.schedules import linear_levels  # noqa: E402
from poe_backend.toy.run import run_toy  # noqa: E402
from poe_backend.toy.spec import DTYPE, ToySpec, parse_spec  # noqa: E402

EXPERTS = [
    {"type": "gmm", "weights": [0.5, 0.5], "means": [[-1.5, -1.0], [1.5, 1.0]], "covs": [[[0.6, 0.0], [0.0, 0.6]]] * 2},
    {"type": "gmm", "weights": [0.5, 0.5], "means": [[-1.5, 1.0], [1.5, 0.8]], "covs": [[[0.5, 0.2], [0.2, 0.9]], [[0.9, -0.2], [-0.2, 0.5]]]},
]
DISC = {"type": "disc", "center": [1.4, 0.9], "radius": 0.6}
EXTENT = 4.0
NUM_LEVELS = 5
LANGEVIN_STEPS = 25
NUM_PARTICLES = 400
COLORS = ("tab:blue", "tab:orange")


def write_figures(out_dir: str | Path, seed: int = 0) -> list[Path]:
    """Write ``annealing.png``, ``annealing_with_reward.png`` and ``naive_vs_product.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plain, with_disc = parse_spec({"experts": EXPERTS}), parse_spec({"experts": EXPERTS, "rewards": [DISC]})
    return [
        _annealing_figure(plain, out_dir / "annealing.png", seed, "Product of two experts, T = 5 levels"),
        _annealing_figure(with_disc, out_dir / "annealing_with_reward.png", seed, "With a disc-shaped discriminative expert and resampling"),
        _naive_figure(plain, out_dir / "naive_vs_product.png", seed),
    ]


def _annealing_figure(spec: ToySpec, path: Path, seed: int, title: str) -> Path:
    """Rows: particles after the MCMC-init step, after the Langevin steps; columns: levels
    t = T ... 1 (the paper's numbering: t = T is noise, t = 1 the target)."""
    snapshots: dict[tuple[int, int], np.ndarray] = {}

    def keep(progress: Progress) -> None:
        if progress.step in (0, LANGEVIN_STEPS):
            snapshots[(progress.level, progress.step)] = progress.particles.numpy().copy()

    generator = torch.Generator().manual_seed(seed)
    levels = linear_levels(NUM_LEVELS, t_max=0.999)
    noise = torch.randn(NUM_PARTICLES, 2, generator=generator, dtype=DTYPE)
    product = spec.product()
    result = samplers.sample_annealed_langevin(product, noise, levels, generator=generator, langevin_steps=LANGEVIN_STEPS, callback=keep)
    start = (noise * levels[0] / np.sqrt(2.0)).numpy()
    figure, axes = plt.subplots(2, NUM_LEVELS, figsize=(3.0 * NUM_LEVELS, 6.2), squeeze=False)
    for column, t in enumerate(levels):
        level = column + 1
        init = start if level == 1 else snapshots[(level, 0)]
        moved = start if level == 1 else snapshots.get((level, LANGEVIN_STEPS), result.particles.numpy())
        for row, (points, stage) in enumerate(((init, "MCMC init"), (moved, "MCMC steps"))):
            axis = axes[row, column]
            _draw_experts(axis, spec, t)
            axis.scatter(points[:, 0], points[:, 1], s=3, c="black", alpha=0.6)
            axis.set_title(f"t={NUM_LEVELS - column} ({stage})", fontsize=9)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def _naive_figure(spec: ToySpec, path: Path, seed: int) -> Path:
    """Exact product samples vs. the naive summed-score ODE vs. the annealed PoE sampler
    (score-only, Feynman-Kac weights) at the same NFE."""
    generator = torch.Generator().manual_seed(seed)
    panels = [
        ("exact product", spec.exact_samples(2000, generator).numpy()),
        ("naive: ODE of summed velocities", run_toy(spec, num_particles=2000, seed=seed, sampler="naive").samples.numpy()),
        ("PoE annealing (score-only, FK weights)", run_toy(spec, num_particles=2000, seed=seed, score_only=True).samples.numpy()),
    ]
    figure, axes = plt.subplots(1, 3, figsize=(10.5, 3.6))
    for axis, (title, points) in zip(axes, panels):
        _draw_experts(axis, spec, 0.0)
        axis.scatter(points[:, 0], points[:, 1], s=2, c="black", alpha=0.35)
        axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def scatter_plot(spec: ToySpec, samples: np.ndarray, path: Path, title: str) -> Path:
    """One panel: samples ``(N, 2)`` over the experts' contours at t = 0 and the discs."""
    figure, axis = plt.subplots(figsize=(4.0, 4.0))
    _draw_experts(axis, spec, 0.0)
    axis.scatter(samples[:, 0], samples[:, 1], s=2, c="black", alpha=0.4)
    axis.set_title(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _draw_experts(axis: plt.Axes, spec: ToySpec, t: float) -> None:
    """Contours of each expert's noised marginal at level t, and the reward discs."""
    grid = np.linspace(-EXTENT, EXTENT, 120)
    xx, yy = np.meshgrid(grid, grid)
    points = torch.tensor(np.stack([xx.ravel(), yy.ravel()], axis=1), dtype=DTYPE)
    for mixture, color in zip(spec.mixtures, COLORS):
        log_density, _ = mixture.noised(t).log_density_and_score(points)
        axis.contour(xx, yy, np.exp(log_density.numpy()).reshape(xx.shape), levels=5, colors=color, linewidths=0.8)
    for reward in spec.rewards:
        center = reward.center.numpy()
        axis.add_patch(plt.Circle(center, reward.radius, fill=False, color="red", linewidth=1.5))
    axis.set_xlim(-EXTENT, EXTENT)
    axis.set_ylim(-EXTENT, EXTENT)
    axis.set_aspect("equal")
    axis.set_xticks([])
    axis.set_yticks([])

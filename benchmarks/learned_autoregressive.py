"""sim2video_ar's sampler settings on a learned autoregressive expert with an exact answer.

The miniature of :mod:`benchmarks.miniatures.learned_sequence`: a learned ``p(x_j | x_<j)`` over
4 sections × the task's render Gaussian per section. Each cell runs ``--runs`` independent
jobs at the task's settings (FramePack's 25-level schedule for a 480p section, 1 Langevin
step at scale 0.5, unadjusted, Euler transport, Gibbs sweeps at ``gibbs_t`` 0.5), keeps the particle the task
writes as its video (particle 0 of the equally weighted result), pools them and prints the
sliced Wasserstein distance to as many exact samples ÷ the two-sample floor, and the share of
the target's first component (exact share in the header). "exact" rows use the mixture's
exact conditionals: the sampler's own error. Run (one thread; trains the net on first use,
~30 s): ``.venv/bin/python benchmarks/learned_autoregressive.py``.

What it shows (figures: README.md, Measurements, autoregressive miniature): the learned and
exact rows agree, so the error is the sampler's: the sections are drawn in order, each fitted
to its own render only, and with few particles the next sections' weights cannot undo that;
a sweep given the past only makes it worse. The transport step (``--transport euler
exponential --particles 1 2 --sweeps 0``, and ``--preset preview``; 600-run rows with
``--seed 7``): Euler wins every cell, so the task keeps it in both presets, as the image
tasks do.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from poe_backend.families.framepack.experts import framepack_levels  # noqa: E402
from poe_backend.sampling.autoregressive import sample_autoregressive  # noqa: E402
from poe_backend.tasks.sim2video_ar import Sim2VideoARParams  # noqa: E402
from benchmarks.miniatures.learned_sequence import DTYPE, SequenceCase, default_case  # noqa: E402
from benchmarks.miniatures.metrics import noise_floor, sliced_wasserstein  # noqa: E402

TASK = Sim2VideoARParams()


def task_levels(params: Sim2VideoARParams) -> list[float]:
    """FramePack's schedule for ``params.levels`` on a section of the preset's size (480p
    unless it sets one)."""
    return framepack_levels(params.levels, params.latent_window_size, (params.height or 480) // 8, (params.width or 832) // 8, t_max=params.t_max)


def task_outputs(
    case: SequenceCase, net, *, particles: int, sweeps: int, runs: int, seed: int,
    langevin_steps: int = TASK.langevin_steps, transport: str = TASK.transport, levels: list[float] | None = None,
) -> torch.Tensor:
    """``(runs, D)``: particle 0 of each run's equally weighted result (what the task writes
    as ``video.mp4``), on ``levels`` (default: the task's)."""
    make_product, outputs = case.factory(net), []
    for run in range(runs):
        generator = torch.Generator().manual_seed(seed + run)
        noise = [torch.randn(particles, 1, generator=generator, dtype=DTYPE) for _ in range(case.sections)]
        result = sample_autoregressive(
            make_product, noise, task_levels(TASK) if levels is None else levels, generator=generator, gibbs_sweeps=sweeps, gibbs_t=TASK.gibbs_t,
            langevin_steps=langevin_steps, step_scale=TASK.step_scale, metropolis=TASK.metropolis, transport=transport,
        )
        outputs.append(torch.cat([chunk[0] for chunk in result.chunks]))
    return torch.stack(outputs)


def first_component_share(case: SequenceCase, samples: torch.Tensor) -> float:
    """Mean posterior responsibility of the target's first component over ``samples``."""
    log_components, _ = case.exact_target().component_log_densities(samples)
    return float(torch.softmax(log_components, dim=1)[:, 0].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=300, help="independent jobs per cell")
    parser.add_argument("--particles", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--sweeps", type=int, nargs="+", default=[0, TASK.gibbs_sweeps])
    parser.add_argument("--transport", choices=("euler", "exponential"), nargs="+", default=[TASK.transport], help="fkc's transport step (the task's default unless given)")
    parser.add_argument("--preset", choices=("quality", "preview"), default="quality", help="the task's levels and Langevin steps for this preset")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    params = Sim2VideoARParams(preset=arguments.preset).effective()
    levels = task_levels(params)
    start = time.perf_counter()
    case = default_case()
    net = case.net()
    generator = torch.Generator().manual_seed(arguments.seed)
    exact = case.exact_target().sample(arguments.runs, generator)
    floor = noise_floor(lambda n: case.exact_target().sample(n, generator), arguments.runs)
    print(
        f"net ready in {time.perf_counter() - start:.0f} s; {case.sections} sections, renders {[round(v, 2) for v in case.renders.tolist()]}, "
        f"{len(levels)} levels, {params.langevin_steps} Langevin steps ({arguments.preset}), {arguments.runs} runs per cell"
    )
    print(f"target's first-component share {float(case.exact_target().weights[0]):.3f} (exact samples: {first_component_share(case, exact):.3f}); two-sample floor {floor:.4f}")
    print(f"{'experts':<8} | {'transport':<11} | {'P':>2} | {'sweeps':>6} | {'SWD/floor':>9} | {'share':>6} | {'s':>5}")
    print("-" * 64)
    for label, model in (("learned", net), ("exact", None)):
        for transport in arguments.transport:
            for particles in arguments.particles:
                for sweeps in arguments.sweeps:
                    began = time.perf_counter()
                    samples = task_outputs(
                        case, model, particles=particles, sweeps=sweeps, runs=arguments.runs, seed=arguments.seed + 1,
                        transport=transport, langevin_steps=params.langevin_steps, levels=levels,
                    )
                    ratio = sliced_wasserstein(samples, exact) / floor
                    share = first_component_share(case, samples)
                    print(f"{label:<8} | {transport:<11} | {particles:>2} | {sweeps:>6} | {ratio:>9.2f} | {share:>6.3f} | {time.perf_counter() - began:>5.0f}", flush=True)


if __name__ == "__main__":
    main()

"""``poe-backend toy sample|figures``: the sampler core on analytic experts."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def register(subparsers: argparse._SubParsersAction) -> None:
    toy = subparsers.add_parser("toy", help="sample products of Gaussian mixtures (no weights needed)")
    commands = toy.add_subparsers(dest="toy_command", required=True)

    sample = commands.add_parser("sample", help="sample a spec's product; prints one JSON line of stats")
    sample.add_argument("--spec", required=True, type=Path, help="SPEC.json (see poe_backend/toy/spec.py)")
    sample.add_argument("--out", required=True, type=Path, help="OUT.npy: (N, D) float64, equally weighted")
    sample.add_argument("--particles", type=int, default=1000)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--sampler", default="annealed", help="annealed (default) | ais | fkc | langevin | naive | single[:K]")
    sample.add_argument("--levels", type=int, default=None, help="annealing levels (default 100; 500 for ODE baselines)")
    sample.add_argument("--langevin-steps", type=int, default=4)
    sample.add_argument("--score-only", action="store_true", help="ignore the experts' energies (Feynman-Kac path)")
    sample.set_defaults(func=_sample)

    figures = commands.add_parser("figures", help="the paper's two 2D illustrations as PNGs")
    figures.add_argument("--out", required=True, type=Path)
    figures.add_argument("--seed", type=int, default=0)
    figures.set_defaults(func=_figures)


def _sample(arguments: argparse.Namespace) -> int:
    from poe_backend.toy.run import run_toy
    from poe_backend.toy.spec import SpecError, load_spec

    if arguments.particles < 1:
        return _fail("--particles: must be at least 1")
    if arguments.levels is not None and arguments.levels < 2:
        return _fail("--levels: must be at least 2")
    if arguments.langevin_steps < 0:
        return _fail("--langevin-steps: must be non-negative")
    try:
        spec = load_spec(arguments.spec)
        run = run_toy(
            spec,
            num_particles=arguments.particles,
            seed=arguments.seed,
            sampler=arguments.sampler,
            num_levels=arguments.levels,
            langevin_steps=arguments.langevin_steps,
            score_only=arguments.score_only,
        )
    except (SpecError, ValueError, FloatingPointError) as error:
        return _fail(str(error))
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(arguments.out, run.samples.numpy())
    print(json.dumps(run.stats()))
    return 0


def _figures(arguments: argparse.Namespace) -> int:
    from poe_backend.toy.figures import write_figures

    for path in write_figures(arguments.out, seed=arguments.seed):
        print(path)
    return 0


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2

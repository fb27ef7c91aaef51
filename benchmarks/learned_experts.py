"""Score-only samplers on learned experts whose exact product is known.

Experts are flow-matching nets trained on samples of Gaussian mixtures
(:mod:`benchmarks.miniatures.learned`, cached under the data dir), so their velocities carry
real model error while the exact product stays closed form. Every distance is the sliced
Wasserstein distance to exact samples divided by the two-sample floor at the same sample
count (1.0 = as good as exact sampling), printed as ``swd|modes`` with the mode-weight error
÷ its floor (see :class:`Measure`); "exact" columns run the same sampler on the exact
mixtures (score-only) to tell sampler error from model error. Parts (``--part``):

* ``fidelity``: each learned expert's own flow ODE against its own mixture.
* ``toy``: many particles at the toy budget (100 log-SNR levels, 4 Langevin steps; the
  ODE baselines 500 levels).
* ``task``: the insertion task's settings (``InsertionParams``: FLUX-shifted 28 levels for
  4096 tokens from t_max = 0.98, 1 Langevin step at scale 0.5, the Euler transport),
  P particles per run, many independent
  runs, one particle per run kept (drawn by weight as the tasks do, or the largest weight),
  pooled. Resampling policies: ``ess 0.5`` (the tasks' threshold), ``ess 1`` (every level),
  ``never`` (final choice by weight only).
* ``spread``: Feynman-Kac log-weights without resampling at the task settings, per level,
  on the high-dimensional case at several dimensions; the growth law in dimension and its
  extrapolation to 10^5.
* ``transport``: fkc's Euler and exponential transport steps at the insertion presets'
  levels and Langevin steps (quality 28 levels / 1 step, preview 8 / 1), ``--particles``
  independent P = 1 runs, with the total variance of the draw against the exact product's
  (the exponential step's draws are too narrow: see ``tasks.base.transport_field``).
* ``conditioning``: conditional experts (the paper's ``p_i(x_i | x_pa(i))``, an alignment of
  the child's velocity to the parent's over the whole event:
  :meth:`~poe_backend.sampling.GenerativeExpert.aligned_velocity`) on the 2-expert cases,
  fkc at the task settings, ``--runs`` independent P = 1 runs in one batched call, for both
  directions and each ``--cond-weight``: the distance to the exact (plain) product, the
  total variance / the exact product's, and the product modes holding at least 1 % of the
  samples (the exact product's count beside it). Conditioning changes the target, so the
  distance measures how far the term moves the draw off the plain product. Up to w = 0.03
  the SWD moves by less than two seeds of the plain product differ (``--seed``); from
  w = 0.1 it grows in one direction or both, and w = 1 breaks the draw (10-80 floors; on
  the many modes the spread shrinks with the broad expert as the child and grows with the
  tight grid as the child). The mode shares move towards the parent's from w = 0.01, which in one direction cancels
  part of the sampler's own share error and in the other adds to it (32-D, seeds 0 and 1:
  expert 0 the child 3.8 / 3.2 -> 2.7 / 2.0 floors at w = 0.1, expert 1 the child -> 8.6 /
  9.0).

Run: ``.venv/bin/python benchmarks/learned_experts.py --part toy`` (one thread). Wall times on
a shared 2-core machine: fidelity + toy ~13 min, task ~3-5 min per case, spread ~11 min,
conditioning (not in the default set; ``--runs 2000``) ~1 min per 2-D case and ~3 min for the
32-D one; the first run also trains the nets (2-D: ~25 s each, 32-D: ~2 min, 128-D: ~8 min).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from poe_backend.families.analytic.gmm import GaussianMixture, GaussianMixtureExpert  # noqa: E402
from poe_backend.sampling import Factor, GenerativeExpert, ProductOfExperts, SampleResult, resampling, samplers  # noqa: E402
from poe_backend.sampling.experts import Conditioning  # noqa: E402
from poe_backend.sampling.schedules import log_snr_levels  # noqa: E402
from poe_backend.tasks import images  # noqa: E402
from poe_backend.tasks.insertion import InsertionParams  # noqa: E402
from benchmarks.miniatures import learned  # noqa: E402
from benchmarks.miniatures.metrics import noise_floor, sliced_wasserstein  # noqa: E402
from poe_backend.toy.run import DEFAULT_LANGEVIN_STEPS, DEFAULT_LEVEL_COUNT, DEFAULT_LEVELS  # noqa: E402
from poe_backend.toy.spec import DTYPE  # noqa: E402

TASK = InsertionParams()  # the image tasks' defaults


def flux_levels(params: InsertionParams) -> list[float]:
    """The insertion task's levels for a square image of ``params.max_side`` (1024²: 4096
    packed FLUX tokens; the preview's 512²: 1024)."""
    return images.levels_for(params, (params.max_side // 16) ** 2)


TASK_LEVELS = flux_levels(TASK)
REFERENCE_SETS = 4  # exact reference sets each distance is averaged over
MODE_REFERENCE = 20000  # exact samples of the reference mode shares
COVERED_SHARE = 0.01  # a mode holding at least this share of the samples counts as covered
CONDITIONING_WEIGHTS = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)


class Measure:
    """Against exact samples (``draw(n)``) of ``mixture`` at sample count ``n``: the SWD ÷
    two-sample floor, and the mode-weight error ÷ its floor (total variation between the
    shares of samples nearest to each of the mixture's components, by responsibility, and a
    large exact reference's shares; the floor is an exact ``n``-set's)."""

    def __init__(self, draw: Callable[[int], torch.Tensor], n: int, mixture: GaussianMixture) -> None:
        self.mixture, self.references, self.floor = mixture, [draw(n) for _ in range(REFERENCE_SETS)], noise_floor(draw, n)
        self.shares = self._shares(draw(MODE_REFERENCE))
        self.mode_floor = float(np.mean([self._mode_error(draw(n)) for _ in range(8)]))

    def ratios(self, samples: torch.Tensor) -> tuple[float, float]:
        distance = float(np.mean([sliced_wasserstein(samples, reference) for reference in self.references]))
        return distance / self.floor, self._mode_error(samples) / self.mode_floor

    def covered(self, samples: torch.Tensor) -> int:
        """The mixture's components holding at least ``COVERED_SHARE`` of ``samples`` (by
        responsibility, as the mode error)."""
        return int((self._shares(samples) >= COVERED_SHARE).sum())

    def _shares(self, samples: torch.Tensor) -> torch.Tensor:
        nearest = self.mixture.component_log_densities(samples.to(self.mixture.means))[0].argmax(dim=1)
        return torch.bincount(nearest, minlength=self.mixture.weights.numel()).double() / samples.shape[0]

    def _mode_error(self, samples: torch.Tensor) -> float:
        return 0.5 * float((self._shares(samples) - self.shares).abs().sum())


def cell(ratios: tuple[float, float]) -> str:
    """``swd|modes`` ratios to their floors."""
    return f"{ratios[0]:.2f}|{ratios[1]:.2f}"


def exact_experts(case: learned.LearnedCase) -> list[GenerativeExpert]:
    """The case's true mixtures as score-only experts (the samplers here use velocities only)."""
    return [GaussianMixtureExpert(mixture) for mixture in case.spec.mixtures]


def run_sampler(name: str, experts: list[GenerativeExpert], noise: torch.Tensor, levels: list[float], generator: torch.Generator, langevin_steps: int, ess_threshold: float = 0.5,
                transport: samplers.Transport | None = None, conditioning: Sequence[Conditioning] = ()) -> SampleResult:
    """``name``: "fkc", "langevin", "naive" or "single:K" on a fresh product of ``experts``
    (with ``conditioning``, except "single"), correctors at the tasks' step scale;
    ``transport``: fkc's (None: the sampler's default)."""
    if name.startswith("single"):
        return samplers.sample_summed_velocity(ProductOfExperts([Factor(experts[int(name.split(":")[1])])]), noise, levels, generator=generator)
    product = ProductOfExperts([Factor(expert) for expert in experts], conditioning=conditioning)
    if name == "fkc":
        options = {} if transport is None else {"transport": transport}
        return samplers.sample_fkc(product, noise, levels, generator=generator, langevin_steps=langevin_steps, step_scale=TASK.step_scale, ess_threshold=ess_threshold, metropolis=False, **options)
    if name == "langevin":
        return samplers.sample_annealed_langevin(product, noise, levels, generator=generator, langevin_steps=langevin_steps, step_scale=TASK.step_scale)
    return samplers.sample_summed_velocity(product, noise, levels, generator=generator)


def part_fidelity(cases: list[learned.LearnedCase], particles: int, seed: int) -> None:
    print(f"\n## Expert fidelity: each expert's own flow ODE ({DEFAULT_LEVELS['single']} log-SNR levels), {particles} samples, SWD / floor vs its own mixture")
    print(f"{'case':<16} | {'expert':>6} | {'learned':>11} | {'exact':>11}")
    for case in cases:
        learned_experts, exact = case.experts(), exact_experts(case)
        for index, mixture in enumerate(case.spec.mixtures):
            generator = torch.Generator().manual_seed(seed)
            measure = Measure(lambda n: mixture.sample(n, generator), particles, mixture)
            ratios = []
            for experts in (learned_experts, exact):
                noise = torch.randn(particles, case.dimension, generator=generator, dtype=DTYPE)
                result = run_sampler(f"single:{index}", experts, noise, log_snr_levels(DEFAULT_LEVELS["single"]), generator, 0)
                ratios.append(cell(measure.ratios(result.particles)))
            print(f"{case.name:<16} | {index:>6} | {ratios[0]:>11} | {ratios[1]:>11}", flush=True)


def part_toy(cases: list[learned.LearnedCase], particles: int, seed: int) -> None:
    print(f"\n## Toy budget: {particles} particles, equally weighted (resampled) output, SWD / floor vs the exact product")
    print(f"{'case':<16} | {'sampler':<10} | {'NFE/expert':>10} | {'learned':>11} | {'exact':>11} | {'seconds':>7}")
    for case in cases:
        learned_experts, exact = case.experts(), exact_experts(case)
        generator = torch.Generator().manual_seed(seed)
        measure = Measure(lambda n: case.exact_samples(n, generator), particles, case.spec.exact_product())
        names = ["fkc", "langevin", "naive"] + [f"single:{i}" for i in range(len(exact))]
        for name in names:
            levels = log_snr_levels(DEFAULT_LEVELS.get(name.split(":")[0], DEFAULT_LEVEL_COUNT))
            ratios, nfe, start = [], 0, time.perf_counter()
            for experts in (learned_experts, exact):
                noise = torch.randn(particles, case.dimension, generator=generator, dtype=DTYPE)
                result = run_sampler(name, experts, noise, levels, generator, DEFAULT_LANGEVIN_STEPS)
                ratios.append(cell(measure.ratios(result.equally_weighted(generator))))
                nfe = result.nfe // (1 if name.startswith("single") else len(experts))
            seconds = time.perf_counter() - start
            print(f"{case.name:<16} | {name:<10} | {nfe:>10} | {ratios[0]:>11} | {ratios[1]:>11} | {seconds:>7.1f}", flush=True)


def kept_particles(result: SampleResult, group: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """From particles in consecutive groups of ``group`` (one group = one run), the particle
    each run keeps: drawn by weight, and the largest weight. Each ``(runs, D)``."""
    particles = result.particles.reshape(-1, group, result.particles.shape[-1])
    log_weights = result.log_weights.reshape(-1, group)
    drawn = torch.stack([resampling.multinomial(generator, weights, 1)[0] for weights in log_weights])
    rows = torch.arange(particles.shape[0])
    return particles[rows, drawn], particles[rows, log_weights.argmax(dim=1)]


def task_samples(
    name: str, experts: list[GenerativeExpert], policy: str, group: int, runs: int, dimension: int, generator: torch.Generator,
    levels: list[float], langevin_steps: int, transport: samplers.Transport,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled kept particles of ``runs`` runs of ``group`` particles at the task settings.
    Runs without resampling are independent per particle, so they share one batched call;
    resampling runs (fkc with ``policy`` "ess 0.5" or "ess 1") are called one by one."""
    if name != "fkc" or policy == "never" or group == 1:
        noise = torch.randn(runs * group, dimension, generator=generator, dtype=DTYPE)
        result = run_sampler(name, experts, noise, levels, generator, langevin_steps, ess_threshold=0.0, transport=transport)
        return kept_particles(result, group, generator)
    threshold = {"ess 0.5": 0.5, "ess 1": 1.0}[policy]
    drawn, best = [], []
    for _ in range(runs):
        noise = torch.randn(group, dimension, generator=generator, dtype=DTYPE)
        result = run_sampler(name, experts, noise, levels, generator, langevin_steps, ess_threshold=threshold, transport=transport)
        one_drawn, one_best = kept_particles(result, group, generator)
        drawn.append(one_drawn)
        best.append(one_best)
    return torch.cat(drawn), torch.cat(best)


def part_task(cases: list[learned.LearnedCase], runs: int, seed: int, num_levels: int, langevin_steps: int, transport: samplers.Transport) -> None:
    levels = flux_levels(TASK.model_copy(update={"levels": num_levels}))
    print(
        f"\n## Task settings: {num_levels} FLUX-shifted levels (mu for 4096 tokens), {langevin_steps} Langevin steps, {transport} transport, "
        f"{runs} runs of P particles, one kept per run, pooled; SWD / floor ({runs} samples) vs the exact product"
    )
    print("   P = 2 at 'ess 0.5' never resamples (the ESS of two particles is at least 1 = 0.5 P): it is 'never'.")
    print(f"{'case':<16} | {'sampler':<10} | {'policy':<8} | {'P':>2} | {'learned drawn':>13} | {'learned best':>12} | {'exact drawn':>11} | {'exact best':>11} | {'seconds':>7}")
    configurations = [("fkc", "never", 1), ("fkc", "never", 2), ("fkc", "never", 4), ("fkc", "ess 0.5", 4), ("fkc", "ess 1", 2), ("fkc", "ess 1", 4), ("langevin", "-", 1), ("naive", "-", 1)]
    for case in cases:
        learned_experts, exact = case.experts(), exact_experts(case)
        generator = torch.Generator().manual_seed(seed)
        measure = Measure(lambda n: case.exact_samples(n, generator), runs, case.spec.exact_product())
        rows = configurations + [(f"single:{i}", "-", 1) for i in range(len(exact))]
        for name, policy, group in rows:
            start, ratios = time.perf_counter(), []
            for experts in (learned_experts, exact):
                drawn, best = task_samples(name, experts, policy, group, runs, case.dimension, generator, levels, langevin_steps, transport)
                ratios += [cell(measure.ratios(drawn)), cell(measure.ratios(best))]
            seconds = time.perf_counter() - start
            print(f"{case.name:<16} | {name:<10} | {policy:<8} | {group:>2} | {ratios[0]:>13} | {ratios[1]:>12} | {ratios[2]:>11} | {ratios[3]:>11} | {seconds:>7.1f}", flush=True)


def part_transport(cases: list[learned.LearnedCase], particles: int, seed: int) -> None:
    """fkc's two transport steps at the insertion task's quality and preview settings, each
    particle an independent P = 1 run (no resampling), against the exact product."""
    presets = {name: InsertionParams(preset=name).effective() for name in ("quality", "preview")}
    print(f"\n## Transport: {particles} independent particles (P = 1 runs), the insertion presets' levels and Langevin steps; SWD / floor | mode error, and total variance / the exact product's")
    print(f"{'case':<16} | {'experts':<7} | {'preset':<7} | {'transport':<11} | {'NFE':>4} | {'SWD|modes':>11} | {'variance':>8}")
    for case in cases:
        generator = torch.Generator().manual_seed(seed)
        measure = Measure(lambda n: case.exact_samples(n, generator), particles, case.spec.exact_product())
        exact_variance = float(case.exact_samples(particles, generator).var(0).sum())
        for kind, experts in (("learned", case.experts()), ("exact", exact_experts(case))):
            for name, params in presets.items():
                levels = flux_levels(params)
                for transport in ("euler", "exponential"):
                    noise = torch.randn(particles, case.dimension, generator=torch.Generator().manual_seed(seed + 1), dtype=DTYPE)
                    result = run_sampler("fkc", experts, noise, levels, torch.Generator().manual_seed(seed + 2), params.langevin_steps, ess_threshold=0.0, transport=transport)
                    variance = float(result.particles.var(0).sum()) / exact_variance
                    print(f"{case.name:<16} | {kind:<7} | {name:<7} | {transport:<11} | {result.nfe // len(experts):>4} | {cell(measure.ratios(result.particles)):>11} | {variance:>8.2f}", flush=True)


def conditioning_rows(weights: Sequence[float]) -> list[tuple[str, list[Conditioning]]]:
    """``(label, links)`` of a 2-expert product: the plain product once, then expert 1
    conditioned on expert 0 ("0>1") and the reverse ("1>0") at each nonzero weight, over
    the whole event."""
    rows = [("plain", [])]
    for parent, child in ((0, 1), (1, 0)):
        rows += [(f"{parent}>{child} w={weight:g}", [Conditioning(child=child, parents=(parent,), weight=weight)]) for weight in weights if weight != 0.0]
    return rows


def part_conditioning(cases: list[learned.LearnedCase], runs: int, seed: int, weights: Sequence[float]) -> None:
    """fkc at the task settings with and without a conditioning link, ``runs`` independent
    P = 1 runs in one batched call per row (the same noise and generator seed in every
    row), learned and exact experts; the single experts' ODEs for reference."""
    print(
        f"\n## Conditional experts: fkc at the task settings ({TASK.levels} FLUX-shifted levels, {TASK.langevin_steps} Langevin step, {TASK.transport}), {runs} independent P = 1 runs; "
        "'parent>child w': the child aligned to the parent over the whole event"
    )
    print(f"   SWD|modes: ÷ their floors vs the exact plain product; variance: total variance ÷ the exact product's; modes: the exact product's components holding ≥ {COVERED_SHARE:.0%}")
    print(f"{'case':<16} | {'experts':<7} | {'row':<12} | {'SWD|modes':>11} | {'variance':>8} | {'modes':>7} | {'evals':>5} | {'fwd':>4} | {'seconds':>7}")
    for case in (case for case in cases if len(case.spec.mixtures) == 2):
        generator = torch.Generator().manual_seed(seed)
        measure = Measure(lambda n: case.exact_samples(n, generator), runs, case.spec.exact_product())
        exact = case.exact_samples(MODE_REFERENCE, generator)
        exact_variance, exact_modes = float(exact.var(0).sum()), measure.covered(exact)
        rows = conditioning_rows(weights) + [(f"single:{index}", []) for index in range(2)]
        for kind, experts in (("learned", case.experts()), ("exact", exact_experts(case))):
            for label, links in rows:
                noise = torch.randn(runs, case.dimension, generator=torch.Generator().manual_seed(seed + 1), dtype=DTYPE)
                name, start = (label if label.startswith("single") else "fkc"), time.perf_counter()
                result = run_sampler(name, experts, noise, TASK_LEVELS, torch.Generator().manual_seed(seed + 2), TASK.langevin_steps, ess_threshold=0.0, transport=TASK.transport, conditioning=links)
                seconds, samples = time.perf_counter() - start, torch.nan_to_num(result.particles, nan=0.0)
                variance = float(samples.var(0).sum()) / exact_variance
                print(
                    f"{case.name:<16} | {kind:<7} | {label:<12} | {cell(measure.ratios(samples)):>11} | {variance:>8.2f} | {measure.covered(samples):>3}/{exact_modes:<3} | "
                    f"{result.nfe:>5} | {result.forwards:>4} | {seconds:>7.1f}",
                    flush=True,
                )


def log_weights_at(experts: list[GenerativeExpert], noise: torch.Tensor, level: int, seed: int) -> torch.Tensor:
    """Feynman-Kac log-weights ``(N,)`` without resampling after the transport to
    ``TASK_LEVELS[level]`` (the final ones for the last level): a run on the truncated
    schedule repeats the full run's trajectory up to there (same seed, no resampling draws)."""
    result = run_sampler("fkc", experts, noise, TASK_LEVELS[: level + 1], torch.Generator().manual_seed(seed), TASK.langevin_steps, ess_threshold=0.0, transport=TASK.transport)
    return result.log_weights


def ess_fraction(log_weights: torch.Tensor, group: int) -> float:
    """Mean Kish ESS / P over consecutive groups of ``group`` particles (independent runs)."""
    return float(np.mean([resampling.effective_sample_size(weights) / group for weights in log_weights.reshape(-1, group)]))


def gaussian_ess_fraction(std: float, group: int, draws: int = 20000) -> float:
    """Expected ESS / P of ``group`` particles whose log-weights are i.i.d. N(0, std²)."""
    log_weights = torch.randn(draws, group, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * std
    return ess_fraction(log_weights.flatten(), group)


def part_spread(dimensions: list[int], exact_dimensions: list[int], particles: int, seed: int) -> None:
    print(f"\n## Log-weight spread: fkc at the task settings without resampling, {particles} independent particles per dimension")
    print("   std: of the cumulative log-weights over particles; step: std of that level's increment alone (what a run resampled at every level sees)")
    runs = {}
    for kind, dims in (("learned", dimensions), ("exact", exact_dimensions)):
        for dimension in dims:
            case = learned.high_dimensional(dimension)
            experts = case.experts() if kind == "learned" else exact_experts(case)
            noise = torch.randn(particles, dimension, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
            start = time.perf_counter()
            cumulative = [log_weights_at(experts, noise, level, seed) for level in range(1, len(TASK_LEVELS))]
            steps = [cumulative[0]] + [after - before for before, after in zip(cumulative[:-1], cumulative[1:])]
            runs[kind, dimension] = (cumulative, steps, time.perf_counter() - start)
    keys = list(runs)
    print("\n" + f"{'level':>5} | {'t':>5} | " + " | ".join(f"{kind[:5]} D={dimension:<4} std  step" for kind, dimension in keys))
    for index in range(len(TASK_LEVELS) - 1):
        cells = [f"{float(runs[key][0][index].std()):>16.2f} {float(runs[key][1][index].std()):>5.2f}" for key in keys]
        print(f"{index + 1:>5} | {TASK_LEVELS[index + 1]:>5.3f} | " + " | ".join(cells))
    print("\n" + f"{'experts':<7} | {'D':>4} | {'final std':>9} | {'max step':>8} | {'end ESS/P P=2':>13} | {'P=4':>5} | {'step ESS/P P=4 (mean)':>21} | {'levels < 0.5':>12} | {'seconds':>7}")
    for (kind, dimension), (cumulative, steps, seconds) in runs.items():
        step_ess = [ess_fraction(step, 4) for step in steps]
        below = sum(value < 0.5 for value in step_ess)
        print(
            f"{kind:<7} | {dimension:>4} | {float(cumulative[-1].std()):>9.2f} | {max(float(s.std()) for s in steps):>8.2f} | "
            f"{ess_fraction(cumulative[-1], 2):>13.2f} | {ess_fraction(cumulative[-1], 4):>5.2f} | {np.mean(step_ess):>21.2f} | "
            f"{below:>5}/{len(steps):<6} | {seconds:>7.1f}"
        )
    print("\n## Growth law in D (least squares in log-log) and extrapolation to D = 1e5 (ESS/P for Gaussian log-weights of that std)")
    for kind in ("learned", "exact"):
        rows = [(dimension, runs[k, dimension]) for k, dimension in keys if k == kind]
        if len(rows) < 2:
            continue
        dims = np.log([float(dimension) for dimension, _ in rows])
        for label, values in (("final std", [float(run[0][-1].std()) for _, run in rows]), ("max step std", [max(float(s.std()) for s in run[1]) for _, run in rows])):
            slope, intercept = np.polyfit(dims, np.log(values), 1)
            at = math.exp(intercept) * 1e5**slope
            print(f"{kind:<7} {label:<12}: {math.exp(intercept):.3f} · D^{slope:.2f} -> D = 1e5: {at:.1f} (ESS/P P=2: {gaussian_ess_fraction(at, 2):.2f}, P=4: {gaussian_ess_fraction(at, 4):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("fidelity", "toy", "task", "spread", "transport", "conditioning"), action="append", help="repeatable; default: all but conditioning")
    parser.add_argument("--case", action="append", help="case name (repeatable); default: all of learned.cases()")
    parser.add_argument("--particles", type=int, default=2000, help="particles of the toy-budget and fidelity parts")
    parser.add_argument("--runs", type=int, default=500, help="independent runs per row of the task and conditioning parts")
    parser.add_argument("--task-levels", type=int, default=TASK.levels, help="levels of the task part")
    parser.add_argument("--task-langevin-steps", type=int, default=TASK.langevin_steps, help="Langevin steps of the task part")
    parser.add_argument("--task-transport", choices=("euler", "exponential"), default=TASK.transport, help="fkc's transport step in the task part")
    parser.add_argument("--spread-particles", type=int, default=256)
    parser.add_argument("--dimensions", type=int, nargs="+", default=[8, 32, 128], help="learned dimensions of the spread part")
    parser.add_argument("--exact-dimensions", type=int, nargs="+", default=[8, 32, 128], help="exact experts cost O(D^3) per call (D = 128: ~3 min)")
    parser.add_argument("--cond-weight", type=float, nargs="+", default=list(CONDITIONING_WEIGHTS), help="alignment weights w of the conditioning part")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    cases = [case for case in learned.cases() if not arguments.case or case.name in arguments.case]
    parts = arguments.part or ["fidelity", "toy", "task", "spread", "transport"]
    if "fidelity" in parts:
        part_fidelity(cases, arguments.particles, arguments.seed)
    if "toy" in parts:
        part_toy(cases, arguments.particles, arguments.seed)
    if "task" in parts:
        part_task(cases, arguments.runs, arguments.seed, arguments.task_levels, arguments.task_langevin_steps, arguments.task_transport)
    if "spread" in parts:
        part_spread(arguments.dimensions, arguments.exact_dimensions, arguments.spread_particles, arguments.seed)
    if "transport" in parts:
        part_transport(cases, arguments.particles, arguments.seed)
    if "conditioning" in parts:
        part_conditioning(cases, arguments.runs, arguments.seed, arguments.cond_weight)


if __name__ == "__main__":
    main()

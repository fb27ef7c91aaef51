"""The regional_t2i task in miniature on 8×8 digits: "a 7 on top, a 3 below" on a 16×8
canvas, a global expert ("a 7 and a 3": what, not where) × one expert per region ("a 7"
at weight α on the top slot, "a 3" on the bottom; weight maps summing to 1 per value, the
task's own) × a box-aware classifier reward standing in for VQAScore. See
:mod:`benchmarks.miniatures.regional`.

Prints, for each sampler and P particles per run (the task's settings: 28 FLUX-shifted
levels for 1024², langevin_steps 2, step_scale 0.5, no Metropolis, ESS threshold 0.5,
t_max 0.98; independent runs with a random layout of two different classes each, the same
layouts and seeds for every method), one table per selection of the output ("best": the
highest reward, the paper's output; "draw": drawn by weight, the task's today): the chosen
canvas's reward ``r`` (the product of the two slots' class probabilities, VQAScore's
P(yes) analogue) and ``log r``, an independent judge's per-region and layout accuracy, the
RMSE of its slots to the nearest held-out digit (plausibility; real digits' value in the
header), resamplings per run and NFE per particle (matched: 237 for every regional
sampler), all as mean ± standard error over runs. The samplers: ``sample_fkc`` with
``fk_scale`` 1 (exact Feynman-Kac weights, the task's default), 0.3, 0.1 and 0 (the
reward's twist ratios alone), 100 and 1000 (stress tests: the disagreement term as large
as a full-size image's many more disagreeing values would make it), and
``sample_annealed_langevin`` (the paper's); at P = 1 the global expert alone on its ODE
(``method="flux"``) and the product without the reward. Then, at ``--spread-particles``,
fkc's log-weights per level without resampling split into the transport part T (the
experts' disagreement, what ``fk_scale`` multiplies) and the reward's twist part R, the
ESS / P that ``fk·T + R`` leaves at each ``fk_scale``, the share of the table's runs that
resampled at each level, and the correlation over particles of the final T with the
final reward.

Run: ``.venv/bin/python benchmarks/regional_digits.py --runs 64 --particles 1 4 8`` and
``... --runs 64 --particles 32 --no-baselines --no-spread`` (the defaults do both in one
process, about 11 min on one thread). The canvas net trains on first use (16,000 Adam
steps: about 25 min on a thread shared with other jobs), cached under the data dir.

What it shows: the global expert alone (it knows what, not where) follows the layout
least often, the regional product more often, and with the reward most of all; at P = 1 fkc's correctors (accepted by the reward's twist
ratio) follow the layout where annealed Langevin, whose reward acts only by resampling,
does no better than the product without the reward. Choosing the best-scoring particle
beats drawing one by weight at every P > 1 and every sampler. On these 128 values the
disagreement term's spread is an order of magnitude below the reward's, so fk_scale from
0 to 1 gives the same outputs and resampling fires rarely and late, on the reward; the
term is not noise here (particles with the wrong layout are where the experts disagree:
it correlates with the reward), so amplified to a few nats (fk_scale 100) it helps, while
amplified to tens of nats (fk_scale 1000) it resamples at most levels and the best
particle's reward drops below fk_scale 1's. The judge's nearest-digit RMSE falls as the
reward rises (no sign of outputs that fool the reward classifier alone).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.miniatures import digits, regional  # noqa: E402

PARTICLE_COUNTS = (1, 4, 8, 32)
COLUMNS = (("r", 3), ("log r", 2), ("region acc", 3), ("layout acc", 3), ("NN RMSE", 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=64, help="independent runs per cell")
    parser.add_argument("--particles", type=int, nargs="+", default=list(PARTICLE_COUNTS))
    parser.add_argument("--methods", nargs="+", default=list(regional.METHODS), choices=list(regional.METHODS))
    parser.add_argument("--no-baselines", action="store_true", help="skip the P = 1 reference rows")
    parser.add_argument("--spread-particles", type=int, default=8, help="P of the log-weight spread table")
    parser.add_argument("--spread-runs", type=int, default=8)
    parser.add_argument("--no-spread", action="store_true")
    parser.add_argument("--global-caption", choices=("all", "null"), default="all", help="the global expert's caption: both classes (the task's default global prompt) or none")
    parser.add_argument("--guidance", type=float, default=0.0, help="classifier-free guidance of every expert on its caption")
    parser.add_argument("--reward-strength", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = digits.load_data()
    net, rewards, judge = regional.canvas_net(data), regional.reward_model(data), regional.fit_judge(data)
    case = regional.RegionalCase(global_caption=arguments.global_caption, guidance=arguments.guidance, reward_strength=arguments.reward_strength)
    params = regional.RegionalParams()
    print(f"torch threads {torch.get_num_threads()}; nets ready in {time.perf_counter() - start:.0f} s; {arguments.runs} runs per cell (layouts, seeds shared by all methods), seed {arguments.seed}")
    print(f"reward classifier held-out accuracy {rewards.accuracy:.3f}; judge (SVC on the held-out digits) accuracy on the training digits {judge.accuracy:.3f}; "
          f"real digits' NN RMSE {judge.real_rmse:.3f}")
    print(f"task settings: levels {params.levels} ({params.schedule}, 4096 tokens), langevin_steps {params.langevin_steps}, step_scale {params.step_scale}, metropolis {params.metropolis}, "
          f"ess_threshold {params.ess_threshold}, t_max {params.t_max}, transport {params.transport}; {case}")
    cells = run_cells(net, rewards, judge, case, arguments)
    for select in regional.SELECTIONS:
        print_table(select, cells)
    if not arguments.no_spread:
        spread = regional.weight_spread(net, rewards, case, particles=arguments.spread_particles, runs=arguments.spread_runs, scales=(1000.0, 100.0, 1.0, 0.3, 0.1, 0.0), seed=arguments.seed)
        print_spread(spread, [cell for cell in cells if cell.particles == arguments.spread_particles and cell.method.startswith("fkc")])
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


def run_cells(net, rewards: regional.RewardModel, judge: regional.Judge, case: regional.RegionalCase, arguments: argparse.Namespace) -> list[regional.Cell]:
    """The baselines at P = 1 (unless ``--no-baselines``), then every method at every P."""
    cells = []
    for method in () if arguments.no_baselines else regional.BASELINES.values():
        cells.append(regional.run_cell(net, rewards, judge, method, case, particles=1, runs=arguments.runs, seed=arguments.seed))
    for key in arguments.methods:
        for particles in arguments.particles:
            cells.append(regional.run_cell(net, rewards, judge, regional.METHODS[key], case, particles=particles, runs=arguments.runs, seed=arguments.seed))
    return cells


def print_table(select: str, cells: list[regional.Cell]) -> None:
    """One line per method × P: the measures as mean ± standard error over runs."""
    head = f"{'select=' + select:<26} | {'P':>3} | " + " | ".join(f"{name:>13}" for name, _ in COLUMNS) + f" | {'resamples':>11} | {'NFE':>4} | {'s/run':>5}"
    print(f"\n{head}\n{'-' * len(head)}")
    for cell in cells:
        values = " | ".join(f"{_plus_minus(*cell.measures[select][name], decimals):>13}" for name, decimals in COLUMNS)
        print(f"{cell.method:<26} | {cell.particles:>3} | {values} | {_plus_minus(*cell.resamplings, 1):>11} | {cell.nfe:>4} | {cell.seconds / cell.runs:>5.2f}")


def print_spread(spread: regional.WeightSpread, cells: list[regional.Cell]) -> None:
    """Per level: the transport and reward parts' std, the ESS / P per fk_scale without
    resampling, and the share of the main runs (``cells``, fkc at the spread's P) that
    resampled there."""
    scales = list(spread.ess_fraction)
    print(f"\nfkc log-weights without resampling, P={spread.particles}, {spread.runs} runs: std over particles (nats, RMS over runs) of the transport part T and the reward part R "
          f"accumulated since the start; ESS/P of fk·T + R; share of the table's runs that resampled at the level (with resampling)")
    head = f"{'level':>5} | {'t':>6} | {'std T':>8} | {'std R':>6} | " + " | ".join(f"{'ESS/P fk=' + format(s, 'g'):>11}" for s in scales)
    head += "".join(f" | {'resampled ' + cell.method.removeprefix('fkc, fk_scale '):>13}" for cell in cells)
    print(f"{head}\n{'-' * len(head)}")
    for index, t in enumerate(spread.times):
        level = index + 2
        row = f"{level:>5} | {t:>6.3f} | {spread.transport_std[index]:>8.2f} | {spread.reward_std[index]:>6.2f} | " + " | ".join(f"{spread.ess_fraction[s][index]:>11.3f}" for s in scales)
        row += "".join(f" | {sum(level in levels for levels in cell.resample_levels) / cell.runs:>13.2f}" for cell in cells)
        print(row)
    print(f"correlation over particles of the final T with the final log r (mean over runs): {spread.reward_correlation:.2f}")


def _plus_minus(mean: float, error: float, decimals: int) -> str:
    return f"{mean:.{decimals}f}±{error:.{decimals}f}"


if __name__ == "__main__":
    main()

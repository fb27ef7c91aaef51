"""Regional text-to-image in miniature: a layout of two digits on a 16×8 canvas ("a 7 on
top, a 3 below"), a global expert and one expert per region, times a box-aware reward.

The analogue of :mod:`poe_backend.tasks.regional_t2i`, on scikit-learn's 8×8 digits
(:func:`benchmarks.miniatures.digits.load_data`, pixels in [-1, 1]):

* a *canvas* is two digits stacked, 16 rows × 8 columns, a flat ``(128,)`` row-major
  vector: the top slot is values 0..63 (rows 0..7), the bottom slot 64..127; the two
  digits of a training canvas are drawn independently;
* one *caption-conditioned velocity net* on canvases: the caption is the count of each
  digit class it mentions (``(10,)``), never *where*: as a text prompt names objects
  without placing them. Training captions name both digits, one of them, or none (the null
  caption, all zeros) in the shares of :data:`CAPTION_SHARES`;
* the *global expert* is the net on the global prompt, the caption naming both classes
  ("a 7 and a 3": the task's default global prompt is the region prompts joined). It
  knows what, not where: alone it places the two digits either way round.
  ``global_caption="null"`` makes it the unconditional net instead;
* *region expert r* is the net on the caption naming only its class ("a 7"): a canvas
  with a 7 in either slot and anything in the other;
* the weight maps are the task's own (:func:`poe_backend.families.flux.runtime.regional_weights`,
  one token per value, the slots as boxes): ``α`` on a region's slot, ``1 − α`` for the
  global expert, summing to 1 on every value, in a :class:`RegionalProduct`;
* the *reward* (:class:`SlotReward`, the stand-in for VQAScore) is a logistic-regression
  digit classifier fit on the training digits, read on each slot:
  ``log r(x) = Σ_slots log p(slot's class | slot's pixels)``, tempered by ``(1 − t)`` on the
  clean prediction as :class:`~poe_backend.families.vqascore.scorer.VQAScoreReward` is.
  Unlike VQAScore, which asks every prompt of the whole image, it sees the boxes, so
  whether the layout was followed is checkable;
* the *judge* (:class:`Judge`) is independent of the nets and the reward: an RBF support-
  vector classifier fit on the held-out digits (which neither the nets nor the reward saw),
  its accuracy measured on the training digits; plausibility is each slot's RMSE to its
  nearest held-out digit, beside what real (training) digits score.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from poe_backend.families.flux.runtime import RegionalProduct, regional_weights
from poe_backend.models.specs import data_dir
from poe_backend.sampling import Factor, Reward, SampleResult, resampling
from poe_backend.sampling.run import Selection
from poe_backend.tasks import images
from poe_backend.tasks.base import SAMPLERS, SamplerName, sampler_options
from poe_backend.tasks.regional_t2i import RegionalParams
from benchmarks.miniatures.digits import FLUX_TOKENS_1024, NUM_CLASSES, DigitsData, GuidedExpert, fit_classifier
from benchmarks.miniatures.flow_net import LearnedExpert, VelocityNet, cache_name, load_or_train, train_velocity

SLOT = 64  # one 8×8 digit
SLOTS = 2  # top, bottom
CANVAS = SLOTS * SLOT
CANVAS_ROWS, CANVAS_COLUMNS = 16, 8
#: Shares of the training captions: both digits named, the top one only, the bottom one only, none (null).
CAPTION_SHARES = {"both": 0.4, "top": 0.2, "bottom": 0.2, "null": 0.2}
SELECTIONS: tuple[Selection, ...] = ("best", "draw")


@dataclass(frozen=True)
class CanvasTraining:
    """The caption-conditioned canvas net and its training set (``canvases`` random pairs
    of training digits), cached by a hash of this and :data:`CAPTION_SHARES`; trains in
    about 25 min on a thread shared with other jobs."""

    canvases: int = 262144
    width: int = 512
    depth: int = 4
    steps: int = 16000
    batch_size: int = 256
    learning_rate: float = 1e-3
    seed: int = 0

    def cache_path(self) -> Path:
        """``data_dir()/learned/digits-canvas-<hash>.pt``."""
        return data_dir() / "learned" / cache_name("digits-canvas", {"caption_shares": CAPTION_SHARES, **asdict(self)})


def caption(*classes: Tensor) -> Tensor:
    """The caption ``(N, 10)`` naming one class per row of each ``classes`` ``(N,)``
    (counts: naming 3 twice gives 2 at index 3); no classes: ``(1, 10)`` zeros, the null caption."""
    if not classes:
        return torch.zeros(1, NUM_CLASSES)
    return sum(torch.nn.functional.one_hot(labels, NUM_CLASSES).float() for labels in classes)


def training_canvases(data: DigitsData, config: CanvasTraining) -> tuple[Tensor, Tensor]:
    """``config.canvases`` canvases ``(N, 128)`` of two independent training digits and
    their captions ``(N, 10)``, drawn in the shares of :data:`CAPTION_SHARES`."""
    generator = torch.Generator().manual_seed(config.seed)
    pick = torch.randint(data.train_images.shape[0], (config.canvases, SLOTS), generator=generator)
    canvases = data.train_images[pick].reshape(config.canvases, CANVAS)
    top, bottom = data.train_labels[pick[:, 0]], data.train_labels[pick[:, 1]]
    kind = torch.multinomial(torch.tensor(list(CAPTION_SHARES.values())), config.canvases, replacement=True, generator=generator)
    options = torch.stack([caption(top, bottom), caption(top), caption(bottom), torch.zeros(config.canvases, NUM_CLASSES)])
    return canvases, options[kind, torch.arange(config.canvases)]


def canvas_net(data: DigitsData, config: CanvasTraining = CanvasTraining()) -> VelocityNet:
    """The canvas net from the cache, trained first when absent."""
    torch.manual_seed(config.seed)
    options = {"steps": config.steps, "batch_size": config.batch_size, "learning_rate": config.learning_rate, "seed": config.seed}

    def train(net: VelocityNet) -> None:
        train_velocity(net, *training_canvases(data, config), **options)

    return load_or_train(config.cache_path(), lambda: VelocityNet(CANVAS, NUM_CLASSES, config.width, config.depth), train)


class SlotReward(Reward):
    """``log r(x) = strength · Σ_slots log p(classes[slot] | slot)`` under a multinomial
    logistic regression (``coefficients`` ``(10, 64)``, ``intercepts`` ``(10,)``), on the
    clean prediction clamped to the pixel range [-1, 1] (as a decode to an image clamps),
    tempered by ``(1 − t)``. Values ``(P,)`` in (−∞, 0]."""

    def __init__(self, coefficients: Tensor, intercepts: Tensor, classes: tuple[int, ...], strength: float = 1.0) -> None:
        self.coefficients, self.intercepts, self.classes, self.strength = coefficients, intercepts, classes, strength

    def slot_log_probabilities(self, x0: Tensor) -> Tensor:
        """``log p(classes[s] | slot s)`` ``(P, SLOTS)`` of canvases ``(P, 128)``."""
        slots = x0.clamp(-1.0, 1.0).reshape(x0.shape[0], SLOTS, SLOT).to(self.coefficients.dtype)
        log_probabilities = torch.log_softmax(slots @ self.coefficients.T + self.intercepts, dim=-1)
        return log_probabilities[:, torch.arange(SLOTS), torch.tensor(self.classes)]

    def log_potential(self, x0: Tensor, t: float) -> Tensor:
        return ((1.0 - t) * self.strength * self.slot_log_probabilities(x0).sum(dim=1)).to(x0.dtype)


@dataclass(frozen=True)
class RewardModel:
    """The reward's classifier (fit on the training digits) and its held-out accuracy."""

    coefficients: Tensor  # (10, 64) float64
    intercepts: Tensor  # (10,) float64
    accuracy: float

    def reward(self, classes: tuple[int, ...], strength: float = 1.0) -> SlotReward:
        """The reward of a layout: ``classes`` (top, bottom)."""
        return SlotReward(self.coefficients, self.intercepts, classes, strength)


def reward_model(data: DigitsData) -> RewardModel:
    """:func:`benchmarks.miniatures.digits.fit_classifier` as a torch reward."""
    classifier, accuracy = fit_classifier(data)
    return RewardModel(torch.from_numpy(classifier.coef_), torch.from_numpy(classifier.intercept_), accuracy)


@dataclass
class Judge:
    """The independent evaluation: an RBF SVC fit on the held-out digits and its accuracy
    on the training digits; ``references`` the held-out digits ``(M, 64)`` for the
    nearest-neighbour RMSE and ``real_rmse`` what the training digits score on it."""

    classifier: object
    accuracy: float
    references: Tensor
    real_rmse: float

    def slot_classes(self, canvases: Tensor) -> Tensor:
        """The judged class of every slot, ``(N, SLOTS)`` int64, of canvases ``(N, 128)``."""
        slots = canvases.reshape(-1, SLOT).numpy()
        return torch.from_numpy(self.classifier.predict(slots)).reshape(-1, SLOTS)

    def nearest_rmse(self, canvases: Tensor) -> Tensor:
        """Per canvas ``(N,)``: the mean over slots of the RMSE (pixel units of [-1, 1]) to
        the nearest held-out digit."""
        return nearest_rmse(canvases.reshape(-1, SLOT), self.references).reshape(-1, SLOTS).mean(dim=1)


def nearest_rmse(samples: Tensor, references: Tensor) -> Tensor:
    """RMSE ``(N,)`` of each of ``samples`` ``(N, 64)`` to its nearest of ``references`` ``(M, 64)``."""
    return torch.cdist(samples.double(), references.double()).min(dim=1).values / math.sqrt(SLOT)


def fit_judge(data: DigitsData) -> Judge:
    """Fit :class:`Judge` on ``data.test_*`` (seconds)."""
    from sklearn.svm import SVC

    classifier = SVC(C=10.0, gamma="scale").fit(data.test_images.numpy(), data.test_labels.numpy())
    accuracy = float(classifier.score(data.train_images.numpy(), data.train_labels.numpy()))
    return Judge(classifier, accuracy, data.test_images, float(nearest_rmse(data.train_images, data.test_images).mean()))


@dataclass(frozen=True)
class RegionalCase:
    """The product's settings beyond the layout: ``region_strength`` α (the task's), the
    global expert's caption ("all": both classes, the task's default global prompt;
    "null": unconditional), the experts' classifier-free ``guidance`` scale (0: the
    conditional net alone) and the reward's ``strength``."""

    region_strength: float = RegionalParams().region_strength
    global_caption: Literal["all", "null"] = "all"
    guidance: float = 0.0
    reward_strength: float = 1.0


def layouts(count: int, seed: int = 0) -> list[tuple[int, int]]:
    """``count`` layouts ``(top class, bottom class)``, two different classes each, drawn
    uniformly with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    pairs = []
    while len(pairs) < count:
        top, bottom = torch.randint(NUM_CLASSES, (2,), generator=generator).tolist()
        if top != bottom:
            pairs.append((top, bottom))
    return pairs


def weight_maps(region_strength: float) -> tuple[Tensor, list[Tensor]]:
    """The task's weight maps for the two slots as boxes, ``(128,)`` each: the global map
    and one map per slot (``regional_weights`` with one 16-pixel token per canvas value)."""
    token = 16
    boxes = [[0, slot * CANVAS_ROWS // SLOTS * token, CANVAS_COLUMNS * token, (slot + 1) * CANVAS_ROWS // SLOTS * token] for slot in range(SLOTS)]
    global_map, region_maps = regional_weights(boxes, CANVAS_ROWS * token, CANVAS_COLUMNS * token, region_strength=region_strength)
    return global_map.flatten(), [weights.flatten() for weights in region_maps]


def expert(net: VelocityNet, condition: Tensor, guidance: float) -> LearnedExpert | GuidedExpert:
    """The net on ``condition`` ``(10,)``, guided when ``guidance`` > 0."""
    return LearnedExpert(net, condition) if guidance == 0.0 else GuidedExpert(net, condition, caption()[0], guidance)


def build_product(net: VelocityNet, layout: tuple[int, int], case: RegionalCase, rewards: list[Reward], experts: Literal["regional", "global"] = "regional") -> RegionalProduct:
    """The regional product for ``layout`` (or, ``experts="global"``, the global expert
    alone at weight 1: the task's ``method="flux"``), times ``rewards``."""
    classes = [torch.tensor([c]) for c in layout]
    global_caption = caption(*classes)[0] if case.global_caption == "all" else caption()[0]
    global_expert = expert(net, global_caption, case.guidance)
    if experts == "global":
        return RegionalProduct([Factor(global_expert, 1.0)], rewards)
    global_map, region_maps = weight_maps(case.region_strength)
    regions = [Factor(expert(net, caption(c)[0], case.guidance), weights) for c, weights in zip(classes, region_maps)]
    return RegionalProduct([Factor(global_expert, global_map)] + regions, rewards)


@dataclass(frozen=True)
class Method:
    """A sampler configuration: ``sampler`` with ``fk_scale`` (fkc only), the reward in
    the product or not, the regional product or the global expert alone."""

    label: str
    sampler: SamplerName
    fk_scale: float = 1.0
    reward: bool = True
    experts: Literal["regional", "global"] = "regional"


#: The compared samplers (the task's settings otherwise), by command-line key. fk_scale 100
#: and 1000 are stress tests: they multiply the experts' disagreement term as a full-size
#: image's larger count of disagreeing values would (on these 128 values its spread is an
#: order of magnitude below the reward's: the spread table of ``benchmarks/regional_digits.py``).
METHODS = {
    "fk1000": Method("fkc, fk_scale 1000", "fkc", 1000.0),
    "fk100": Method("fkc, fk_scale 100", "fkc", 100.0),
    "fk1": Method("fkc, fk_scale 1", "fkc", 1.0),
    "fk0.3": Method("fkc, fk_scale 0.3", "fkc", 0.3),
    "fk0.1": Method("fkc, fk_scale 0.1", "fkc", 0.1),
    "fk0": Method("fkc, fk_scale 0", "fkc", 0.0),
    "al": Method("annealed_langevin", "annealed_langevin"),
}
#: Reference rows at P = 1: the task's method="flux" (the global expert alone on its own flow sampler) and the product without the reward.
BASELINES = {
    "global": Method("global alone (ODE)", "summed_velocity", reward=False, experts="global"),
    "no-reward": Method("regional, no reward (fkc)", "fkc", reward=False),
}


def task_levels(params: RegionalParams) -> list[float]:
    """The task's levels for a 1024² image (FLUX's shifted schedule, 4096 tokens)."""
    return images.levels_for(params, FLUX_TOKENS_1024)


def sample_run(
    net: VelocityNet, rewards: RewardModel, method: Method, layout: tuple[int, int], case: RegionalCase, params: RegionalParams, seed: int, levels: list[float],
) -> tuple[SampleResult, SlotReward]:
    """One run of ``params.particles`` particles on ``levels``; returns the result and the
    layout's reward (to score outputs of a run without it)."""
    reward = rewards.reward(layout, case.reward_strength)
    product = build_product(net, layout, case, [reward] if method.reward else [], method.experts)
    generator, noise = images.start_noise(seed, params.particles, (CANVAS,))
    options = sampler_options(
        method.sampler, langevin_steps=params.langevin_steps, step_scale=params.step_scale, metropolis=params.metropolis,
        ess_threshold=params.ess_threshold, transport=params.transport, fk_scale=method.fk_scale,
    )
    return SAMPLERS[method.sampler](product, noise, levels, generator=generator, **options), reward


@dataclass
class RunRecord:
    """What one run hands over: per selection the chosen canvas ``(128,)`` (clamped to
    [-1, 1]) and its ``log r``; the levels (2-based, as :class:`Progress` counts) at which
    it resampled, its NFE per particle and wall seconds."""

    outputs: dict[str, Tensor]
    log_rewards: dict[str, float]
    resample_levels: list[int]
    nfe: int
    seconds: float


def record_run(result: SampleResult, reward: SlotReward, seed: int, levels: list[float], ess_threshold: float, seconds: float) -> RunRecord:
    """Pick the output per selection ("best" needs rewards in the product; without them
    both selections draw by weight) and score it with ``reward`` at t = 0."""
    outputs, log_rewards = {}, {}
    for select in SELECTIONS:
        index = result.chosen_index(seed, select if result.scores is not None else "draw")
        output = result.particles[index].clamp(-1.0, 1.0)
        outputs[select], log_rewards[select] = output, float(reward.log_potential(output[None], 0.0)[0])
    return RunRecord(outputs, log_rewards, resampled_levels(result, levels, ess_threshold), result.nfe, seconds)


def resampled_levels(result: SampleResult, levels: list[float], ess_threshold: float) -> list[int]:
    """The levels at which a run resampled. fkc: where its recorded ESS (before the
    decision, one per level above 0) fell below ``ess_threshold · P``; annealed Langevin
    resamples at every level above 0 (when it has rewards)."""
    if result.path.startswith("annealed"):
        return list(range(2, len(levels))) if result.resample_count else []
    threshold = ess_threshold * result.particles.shape[0]
    return [level for level, ess in enumerate(result.ess_history[:-1], start=2) if ess < threshold]


@dataclass
class Cell:
    """One method at one particle count over ``runs`` runs: per selection, mean and
    standard error over runs of the chosen canvas's reward ``log r`` and ``r`` (the
    product of the two slots' class probabilities, the analogue of VQAScore's P(yes)),
    the judge's per-region accuracy (the fraction of slots it reads as their class),
    layout accuracy (both slots right) and the nearest-held-out-digit RMSE; and the mean
    resamplings per run."""

    method: str
    particles: int
    runs: int
    measures: dict[str, dict[str, tuple[float, float]]]  # selection -> measure -> (mean, standard error)
    resamplings: tuple[float, float]
    nfe: int
    seconds: float
    resample_levels: list[list[int]] = field(repr=False)


def mean_se(values: Tensor | np.ndarray | list[float]) -> tuple[float, float]:
    """Mean and standard error (ddof 1; 0 for one value) of ``values``."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1) / math.sqrt(array.size)) if array.size > 1 else 0.0


def score_cell(method: Method, particles: int, records: list[RunRecord], layouts_used: list[tuple[int, int]], judge: Judge) -> Cell:
    """Judge the runs' outputs (run i has layout ``layouts_used[i]``)."""
    targets = torch.tensor(layouts_used)
    measures = {}
    for select in SELECTIONS:
        outputs = torch.stack([record.outputs[select] for record in records])
        correct = (judge.slot_classes(outputs) == targets).double()
        log_rewards = torch.tensor([record.log_rewards[select] for record in records])
        measures[select] = {
            "r": mean_se(log_rewards.exp()), "log r": mean_se(log_rewards), "region acc": mean_se(correct.mean(dim=1)),
            "layout acc": mean_se(correct.prod(dim=1)), "NN RMSE": mean_se(judge.nearest_rmse(outputs)),
        }
    return Cell(
        method.label, particles, len(records), measures, mean_se([len(record.resample_levels) for record in records]),
        records[0].nfe, sum(record.seconds for record in records), [record.resample_levels for record in records],
    )


@dataclass
class WeightSpread:
    """fkc's log-weights per level (``times``: ``levels[1:]``, the last at t = 0) without
    resampling, split into the transport part ``T`` (what ``fk_scale`` multiplies) and the
    reward's twist part ``R``: RMS over runs of the across-particle std (ddof 1) of each,
    accumulated since the start, and the mean ESS / P of ``fk · T + R`` per ``fk`` of
    ``scales``; ``reward_correlation`` the mean over runs of the across-particle Pearson
    correlation of the final ``T`` with the final reward ``log r`` (positive: the experts
    disagree less on the particles the reward prefers). Without resampling the particles'
    paths do not depend on ``fk_scale`` (the correctors accept by the twist alone), so
    ``T`` is the difference of a run at ``fk_scale`` 1 and one at 0 with the same seed."""

    particles: int
    runs: int
    times: list[float]
    transport_std: list[float]
    reward_std: list[float]
    ess_fraction: dict[float, list[float]]
    reward_correlation: float


def weight_spread(net: VelocityNet, rewards: RewardModel, case: RegionalCase, *, particles: int, runs: int, scales: tuple[float, ...], seed: int = 0) -> WeightSpread:
    """Measure :class:`WeightSpread` on runs of layouts ``layouts(runs, seed)`` and seeds
    ``seed + i``: the weights at level k come from a run on the first k + 1 levels (the
    same draws as the full run up to there; a run ending above 0 returns its weights)."""
    params = RegionalParams(particles=particles, ess_threshold=0.0)
    levels = task_levels(params)
    transport, reward = np.zeros((runs, len(levels) - 1)), np.zeros((runs, len(levels) - 1))
    ess = {scale: np.zeros((runs, len(levels) - 1)) for scale in scales}
    correlations = []
    for run, layout in enumerate(layouts(runs, seed)):
        for k in range(1, len(levels)):
            with_transport, _ = sample_run(net, rewards, Method("fk1", "fkc", 1.0), layout, case, params, seed + run, levels[: k + 1])
            twist_only, _ = sample_run(net, rewards, Method("fk0", "fkc", 0.0), layout, case, params, seed + run, levels[: k + 1])
            if not torch.equal(with_transport.particles, twist_only.particles):
                raise AssertionError("fkc paths without resampling should not depend on fk_scale")
            twist_part = twist_only.log_weights.double()
            transport_part = with_transport.log_weights.double() - twist_part
            transport[run, k - 1], reward[run, k - 1] = float(transport_part.var()), float(twist_part.var())
            for scale in scales:
                ess[scale][run, k - 1] = resampling.effective_sample_size(scale * transport_part + twist_part) / particles
        correlations.append(float(np.corrcoef(transport_part.numpy(), with_transport.scores.double().numpy())[0, 1]))
    return WeightSpread(
        particles, runs, levels[1:], np.sqrt(transport.mean(0)).tolist(), np.sqrt(reward.mean(0)).tolist(), {s: v.mean(0).tolist() for s, v in ess.items()}, float(np.mean(correlations)),
    )


def run_cell(net: VelocityNet, rewards: RewardModel, judge: Judge, method: Method, case: RegionalCase, *, particles: int, runs: int, seed: int = 0) -> Cell:
    """``runs`` independent runs of ``particles`` particles at the task's settings (run i:
    layout ``layouts(runs, seed)[i]``, seed ``seed + i``, the same across methods), judged."""
    params = RegionalParams(particles=particles)
    levels, used = task_levels(params), layouts(runs, seed)
    records = []
    for run, layout in enumerate(used):
        start = time.perf_counter()
        result, reward = sample_run(net, rewards, method, layout, case, params, seed + run, levels)
        records.append(record_run(result, reward, seed + run, levels, params.ess_threshold, time.perf_counter() - start))
    return score_cell(method, particles, records, used, judge)

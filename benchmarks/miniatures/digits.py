"""The insertion task in miniature, on scikit-learn's bundled 8×8 digits (no download).

Object insertion multiplies FLUX.1 Depth (it sees the depth render of the scene with the
object in it: the composite's geometry, not its appearance) by FLUX.1 Fill (an inpainter
that knows the plate outside the object mask). Here:

* the *layout expert* is a velocity net conditioned on the class (one-hot; all zeros, the
  null class, for a fifth of the rows so that it can be guided classifier-free) and on
  the image's coarse layout (its 2×2 average pools, a 4×4 map), the analogue of Depth: it
  knows the object ("a 3") and where the composite's ink lies, not its pixels;
* the *inpainter* is a velocity net trained to produce the whole image given the pixels
  outside a random rectangular mask (condition: the masked image and the mask), the
  analogue of Fill;
* a *case* (:class:`InsertionCase`) erases a region of held-out digits and asks for a
  digit of the target class there; the layout expert sees the layout of the composite
  (the scene with the object in it), as Depth sees the render of the scene with the
  object. The product should keep the known pixels (the inpainter) and draw the object
  (the layout expert). The composite is the ground truth of the masked region.

Pixels: the dataset's 0..16 intensities mapped to ``x = p / 8 - 1`` in [-1, 1]; an image is a
flat ``(64,)`` row-major vector. Masks are ``(64,)`` in {0, 1} with 1 = generate (the
insertion task's white = object). Runs mirror :mod:`poe_backend.tasks.insertion`: its
sampler defaults and level schedule (FLUX's shift for a 1024² image), the experts' weights,
the single experts on their own flow sampler (summed velocity), the particle drawn by
weight as the output, clamped to the pixel range, and the optional paste-back of
the plate outside the mask (``blend``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Literal

import numpy as np
import torch
from torch import Tensor

from poe_backend.models.specs import data_dir
from poe_backend.sampling import Factor, GenerativeExpert, Progress, ProductOfExperts, SampleResult, resampling
from poe_backend.sampling.experts import Conditioning
from poe_backend.tasks import images
from poe_backend.tasks.insertion import InsertionParams
from benchmarks.miniatures.flow_net import LearnedExpert, VelocityNet, cache_name, load_or_train, train_velocity

SIDE = 8
DIMENSION = SIDE * SIDE
NUM_CLASSES = 10
FLUX_TOKENS_1024 = (1024 // 16) ** 2  # packed FLUX tokens of a 1024² image: the insertion default's schedule
NULL_CLASS_FRACTION = 0.2  # training rows added with the null class (classifier-free guidance)
LAYOUT_POOL = 2  # the layout expert's condition: POOL×POOL average pools, a (8 / POOL)² map
LAYOUT_DIMENSION = (SIDE // LAYOUT_POOL) ** 2
METHODS = ("product-fkc", "product-annealed_langevin", "layout expert alone", "inpainter alone", "naive sum")


@dataclass(frozen=True)
class DigitsData:
    """A stratified split of the 1797 digits: images ``(N, 64)`` float32 in [-1, 1],
    labels ``(N,)`` int64 in 0..9."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


def load_data(test_fraction: float = 0.25, seed: int = 0) -> DigitsData:
    """``sklearn.datasets.load_digits`` (bundled with scikit-learn), split with
    ``train_test_split`` stratified by class."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = (digits.data / 8.0 - 1.0).astype(np.float32)
    train_x, test_x, train_y, test_y = train_test_split(pixels, digits.target, test_size=test_fraction, stratify=digits.target, random_state=seed)
    return DigitsData(*(torch.from_numpy(np.ascontiguousarray(a)) for a in (train_x, train_y.astype(np.int64), test_x, test_y.astype(np.int64))))


def rectangle_mask(rows: tuple[int, int], columns: tuple[int, int]) -> Tensor:
    """``(64,)`` mask, 1 on ``rows[0] <= r < rows[1]``, ``columns[0] <= c < columns[1]``."""
    mask = torch.zeros(SIDE, SIDE)
    mask[rows[0] : rows[1], columns[0] : columns[1]] = 1.0
    return mask.flatten()


def random_masks(count: int, generator: torch.Generator, min_side: int = 2) -> Tensor:
    """``(count, 64)`` random axis-aligned rectangles, each side uniform in ``min_side..8``
    at a uniform position (halves, quarters, blocks and strips all occur)."""
    sizes = torch.randint(min_side, SIDE + 1, (count, 2), generator=generator)
    starts = (torch.rand(count, 2, generator=generator) * (SIDE - sizes + 1)).floor().long()
    return torch.stack([rectangle_mask((int(r), int(r + h)), (int(c), int(c + w))) for (r, c), (h, w) in zip(starts.tolist(), sizes.tolist())])


def class_condition(labels: Tensor) -> Tensor:
    """One-hot ``(N, 10)`` float32 of labels ``(N,)``."""
    return torch.nn.functional.one_hot(labels, NUM_CLASSES).float()


def layout(images: Tensor) -> Tensor:
    """The coarse layout ``(N, 16)`` of images ``(N, 64)``: ``LAYOUT_POOL``² average pools,
    row-major, in [-1, 1]."""
    grid = images.reshape(-1, 1, SIDE, SIDE)
    return torch.nn.functional.avg_pool2d(grid, LAYOUT_POOL).flatten(start_dim=1)


def layout_condition(labels: Tensor | None, images: Tensor) -> Tensor:
    """The layout expert's condition ``(N, 26)``: the one-hot class (zeros when ``labels``
    is None: the null class) and the images' layout."""
    classes = torch.zeros(images.shape[0], NUM_CLASSES) if labels is None else class_condition(labels)
    return torch.cat([classes, layout(images)], dim=-1)


def inpaint_condition(plates: Tensor, masks: Tensor) -> Tensor:
    """The inpainter's condition ``(N, 128)``: ``[plate · (1 - mask), mask]`` (the masked
    pixels read 0, mid-grey), for plates and masks ``(N, 64)`` (or ``(64,)`` each -> ``(128,)``)."""
    return torch.cat([plates * (1.0 - masks), masks], dim=-1)


@dataclass(frozen=True)
class TrainingConfig:
    """Both experts' nets and training; ``masks_per_image`` random masks pair with every
    training image for the inpainter. The defaults train both nets in 75 s on one CPU
    thread (up to 200 s on a core shared with other jobs)."""

    width: int = 256
    depth: int = 3
    steps: int = 4000
    batch_size: int = 256
    learning_rate: float = 2e-3
    masks_per_image: int = 16
    seed: int = 0

    def cache_path(self, role: str) -> Path:
        """``data_dir()/learned/digits-<role>-<hash of the config and the data recipe>.pt``."""
        recipe = {"role": role, "null_class_fraction": NULL_CLASS_FRACTION, "layout_pool": LAYOUT_POOL, **asdict(self)}
        return data_dir() / "learned" / cache_name(f"digits-{role}", recipe)


@dataclass
class DigitExperts:
    """The two trained nets and the classifier that judges their samples."""

    layout_net: VelocityNet
    inpaint_net: VelocityNet
    classifier: object  # a fitted sklearn LogisticRegression
    classifier_accuracy: float  # on the held-out digits, in [0, 1]


def train_experts(data: DigitsData, config: TrainingConfig = TrainingConfig()) -> DigitExperts:
    """Load both nets from the cache, training them first when absent, and fit the
    classifier (seconds)."""
    torch.manual_seed(config.seed)

    def build(condition_dimension: int):
        return lambda: VelocityNet(DIMENSION, condition_dimension, config.width, config.depth)

    options = {"steps": config.steps, "batch_size": config.batch_size, "learning_rate": config.learning_rate, "seed": config.seed}
    generator = torch.Generator().manual_seed(config.seed)
    unconditional = torch.randperm(data.train_images.shape[0], generator=generator)[: int(NULL_CLASS_FRACTION * data.train_images.shape[0])]
    layout_images = torch.cat([data.train_images, data.train_images[unconditional]])
    layout_conditions = torch.cat([layout_condition(data.train_labels, data.train_images), layout_condition(None, data.train_images[unconditional])])
    layout_net = load_or_train(config.cache_path("layout"), build(NUM_CLASSES + LAYOUT_DIMENSION), lambda net: train_velocity(net, layout_images, layout_conditions, **options))
    plates = data.train_images.repeat(config.masks_per_image, 1)
    masks = random_masks(plates.shape[0], generator)
    inpaint_net = load_or_train(config.cache_path("inpaint"), build(2 * DIMENSION), lambda net: train_velocity(net, plates, inpaint_condition(plates, masks), **options))
    classifier, accuracy = fit_classifier(data)
    return DigitExperts(layout_net, inpaint_net, classifier, accuracy)


class GuidedExpert(GenerativeExpert):
    """Classifier-free guidance of a conditional net: ``v_c + scale · (v_c - v_null)``
    (``scale = 0``: the conditional net alone, one forward)."""

    def __init__(self, net: VelocityNet, condition: Tensor, null_condition: Tensor, scale: float) -> None:
        self.conditional = LearnedExpert(net, condition)
        self.unconditional = LearnedExpert(net, null_condition)
        self.scale = scale
        self.passes_per_evaluation = 1 if scale == 0.0 else 2

    def velocity(self, x: Tensor, t: float) -> Tensor:
        velocity = self.conditional.velocity(x, t)
        return velocity if self.scale == 0.0 else velocity + self.scale * (velocity - self.unconditional.velocity(x, t))


def fit_classifier(data: DigitsData) -> tuple[object, float]:
    """Multinomial logistic regression on the clean training digits; returns it and its
    held-out accuracy."""
    from sklearn.linear_model import LogisticRegression

    classifier = LogisticRegression(max_iter=2000, C=0.1).fit(data.train_images.numpy(), data.train_labels.numpy())
    return classifier, float(classifier.score(data.test_images.numpy(), data.test_labels.numpy()))


@dataclass(frozen=True)
class InsertionCase:
    """Regenerate the ``mask`` region of held-out digits of ``plate_classes`` as a digit of
    ``target_class`` (the objects: held-out digits of that class). The default erases the
    left half of held-out 3s and asks for a 3 there: the plate *is* the scene with the
    object in it, a natural image as a photograph with an object inserted is, so the
    layout expert's condition (the scene's layout) is one it was trained on and the
    object's truth is the erased half. The right half of a 3 also allows an 8, a 9 or a
    2: the inpainter alone often draws one of those. (An object pasted into a digit of
    another class, a 3's left half beside an 8's right half, is no digit: the classifier
    read such composites as a 3 little more than half the time and the layout expert saw
    a condition it was never trained on.) Figures: README.md, The sampling math and
    Measurements (``benchmarks/digits_insertion.py``). With ``plate_classes`` equal to
    ``(target_class,)`` run i's object is its plate (:meth:`pairs`). ``class_guidance``
    is the layout expert's classifier-free guidance scale on the class; its null
    condition keeps the layout. The default 1.0 mirrors FLUX Depth, which runs guided
    (``guidance_depth``)."""

    target_class: int = 3
    plate_classes: tuple[int, ...] = (3,)
    mask_rows: tuple[int, int] = (0, SIDE)
    mask_columns: tuple[int, int] = (0, SIDE // 2)
    class_guidance: float = 1.0

    @property
    def mask(self) -> Tensor:
        return rectangle_mask(self.mask_rows, self.mask_columns)

    def plates(self, data: DigitsData) -> Tensor:
        """The held-out digits of the plate classes, ``(M, 64)``."""
        return data.test_images[torch.isin(data.test_labels, torch.tensor(self.plate_classes))]

    def objects(self, data: DigitsData) -> Tensor:
        """The held-out digits of the target class, ``(K, 64)``."""
        return data.test_images[data.test_labels == self.target_class]

    def composite(self, plate: Tensor, object_image: Tensor) -> Tensor:
        """The scene with the object in it, ``(..., 64)`` as the inputs: the object inside
        the mask, the plate outside (what the layout expert sees the layout of, and the
        masked region's truth)."""
        return object_image * self.mask + plate * (1.0 - self.mask)

    def pairs(self, data: DigitsData, runs: int) -> tuple[Tensor, Tensor]:
        """Run i's plate ``i mod M`` and object ``i mod K``: ``(runs, 64)`` each."""
        plates, objects = self.plates(data), self.objects(data)
        index = torch.arange(runs)
        return plates[index % plates.shape[0]], objects[index % objects.shape[0]]


def task_levels(params: InsertionParams) -> list[float]:
    """The insertion task's levels for a 1024² image."""
    return images.levels_for(params, FLUX_TOKENS_1024)


@dataclass(frozen=True)
class ConditioningReading:
    """Which of the product's two experts is conditioned on the other (the paper's
    ``p_i(x_i | x_pa(i))``, an alignment of the child's velocity to the parent's:
    :meth:`~poe_backend.sampling.GenerativeExpert.aligned_velocity`) and over which pixels:
    ``parent`` "layout" (the inpainter is the child) or "inpaint" (the layout expert is);
    ``region`` "mask" (the object's pixels, what the inpainter generates), "outside" (the
    known pixels) or "whole" (all 64); ``weight`` the paper's ``w`` (0: the plain product)."""

    parent: Literal["layout", "inpaint"] = "layout"
    region: Literal["mask", "outside", "whole"] = "mask"
    weight: float = 0.0

    @property
    def name(self) -> str:
        """``parent>child:region``, e.g. ``layout>inpaint:mask``."""
        child = "inpaint" if self.parent == "layout" else "layout"
        return f"{self.parent}>{child}:{self.region}"

    def link(self, mask: Tensor) -> Conditioning:
        """The product's conditioning link; factor 0 is the layout expert, 1 the inpainter
        (:func:`build_product`); ``mask`` ``(64,)`` in {0, 1}."""
        region = {"mask": mask, "outside": 1.0 - mask, "whole": 1.0}[self.region]
        child, parent = (1, 0) if self.parent == "layout" else (0, 1)
        return Conditioning(child=child, parents=(parent,), weight=self.weight, region=region)


def build_product(
    method: str, experts: DigitExperts, case: InsertionCase, plate: Tensor, object_image: Tensor, params: InsertionParams, reading: ConditioningReading | None = None,
) -> tuple[ProductOfExperts, str]:
    """The product a method samples and the sampler it uses (as the insertion task does:
    single experts and the naive sum on the summed-velocity ODE). ``plate`` and
    ``object_image`` are ``(64,)`` (one run) or ``(N, 64)`` (N runs batched as N particles,
    each with its own conditions: valid while nothing resamples). ``reading`` conditions the
    ``product-*`` methods (None or weight 0: the plain product)."""
    scenes = case.composite(plate, object_image).reshape(-1, DIMENSION)
    targets = torch.full((scenes.shape[0],), case.target_class)
    conditions = [layout_condition(targets, scenes), layout_condition(None, scenes), inpaint_condition(plate.reshape(-1, DIMENSION), case.mask.expand(scenes.shape[0], -1))]
    if plate.dim() == 1:
        conditions = [condition[0] for condition in conditions]
    layout_factor = Factor(GuidedExpert(experts.layout_net, conditions[0], conditions[1], case.class_guidance), params.depth_weight)
    inpainter = Factor(LearnedExpert(experts.inpaint_net, conditions[2]), params.fill_weight)
    if method.startswith("product-"):
        links = [] if reading is None or reading.weight == 0.0 else [reading.link(case.mask)]
        return ProductOfExperts([layout_factor, inpainter], conditioning=links), method.removeprefix("product-")
    factors = {"layout expert alone": [layout_factor], "inpainter alone": [inpainter], "naive sum": [layout_factor, inpainter]}[method]
    return ProductOfExperts(factors), "summed_velocity"


def sample_once(
    method: str, experts: DigitExperts, case: InsertionCase, plate: Tensor, object_image: Tensor, params: InsertionParams, seed: int,
    levels: list[float] | None = None, callback: Callable[[Progress], None] | None = None,
) -> SampleResult:
    """One run of ``params.particles`` particles on ``levels`` (default: the task's), with an
    optional progress ``callback``; returns the sampler's result."""
    product, sampler = build_product(method, experts, case, plate, object_image, params)
    generator, noise = images.start_noise(seed, params.particles, (DIMENSION,))
    context = SimpleNamespace(callback=callback, should_stop=None)  # what run_sampler reads of a task context
    return images.run_sampler(params.model_copy(update={"sampler": sampler}), product, noise, task_levels(params) if levels is None else levels, generator, context)


@dataclass
class MethodScore:
    """One method at one particle count over ``runs`` independent runs. RMSEs in pixel
    units of [-1, 1] of the raw output (before the paste-back): over the known pixels
    (against the plate) and over the masked ones (against the object, the composite's
    truth there); accuracies are the fraction of outputs the classifier calls the target
    class, raw and after the paste-back."""

    method: str
    particles: int
    runs: int
    known_rmse: float
    masked_rmse: float
    class_accuracy: float
    blended_accuracy: float
    outputs: Tensor = field(repr=False)  # (runs, 64) raw chosen particles, clamped to [-1, 1]


def score_method(method: str, experts: DigitExperts, case: InsertionCase, data: DigitsData, *, particles: int, runs: int, seed: int = 0, params: InsertionParams | None = None) -> MethodScore:
    """Run ``runs`` independent runs (run i: :meth:`InsertionCase.pairs`, seed ``seed + i``),
    keep the particle each run hands to the user (drawn by weight, as the task does), and
    score the outputs."""
    params = (params or InsertionParams()).model_copy(update={"particles": particles})
    plates, objects = case.pairs(data, runs)
    outputs = []
    for run, (plate, object_image) in enumerate(zip(plates, objects)):
        result = sample_once(method, experts, case, plate, object_image, params, seed + run)
        outputs.append(result.particles[result.chosen_index(seed + run)].clamp(-1.0, 1.0))
    outputs = torch.stack(outputs)
    known = 1.0 - case.mask
    blended = case.composite(plates, outputs)  # the plate pasted back outside the mask
    return MethodScore(
        method, particles, runs, _rmse(outputs, plates, known), _rmse(outputs, objects, case.mask),
        class_accuracy(experts, outputs, case.target_class), class_accuracy(experts, blended, case.target_class), outputs,
    )


#: Raw output pixels beyond this magnitude (the data lie in [-1, 1]) count as out of range.
OUT_OF_RANGE = 1.5


@dataclass
class RunScores:
    """One method over ``N`` independent P = 1 runs, per run: squared errors of the raw
    output averaged over the known pixels (against the plate) and over the masked ones
    (against the object), whether the classifier calls it the target class (raw, and
    after the paste-back), and the fraction of its raw pixels beyond ``OUT_OF_RANGE`` or not
    finite (overshoot); all ``(N,)`` numpy arrays. ``nfe`` and ``forwards`` are one run's
    cost (:attr:`ProductOfExperts.nfe`, expert evaluations summed over experts, and
    :attr:`ProductOfExperts.passes`, network forward-equivalents: a guided evaluation 2, a
    conditioned one 3 times its forwards); ``seconds`` the wall time of all N runs."""

    method: str
    known_mse: np.ndarray
    masked_mse: np.ndarray
    correct: np.ndarray
    blended_correct: np.ndarray
    out_of_range: np.ndarray
    nfe: int
    forwards: int
    seconds: float


def score_runs(
    method: str, experts: DigitExperts, case: InsertionCase, data: DigitsData, *, runs: int, seed: int = 0, params: InsertionParams | None = None,
    reading: ConditioningReading | None = None,
) -> RunScores:
    """``runs`` independent P = 1 runs (run i: :meth:`InsertionCase.pairs`) in one batched
    sampler call of ``runs`` particles, each with its own conditions and no resampling
    (``ess_threshold`` 0; a P = 1 run never resamples), so it draws what ``runs`` separate
    runs draw, from other random numbers than :func:`score_method`'s (noise and corrector
    noise from one generator seeded ``seed``). NaN output pixels are scored as 0 (mid-grey),
    infinite ones as ±1."""
    params = (params or InsertionParams()).model_copy(update={"particles": runs, "ess_threshold": 0.0})
    plates, objects = case.pairs(data, runs)
    product, sampler = build_product(method, experts, case, plates, objects, params, reading)
    generator, noise = images.start_noise(seed, runs, (DIMENSION,))
    start = time.perf_counter()
    result = images.run_sampler(params.model_copy(update={"sampler": sampler}), product, noise, task_levels(params), generator, SimpleNamespace(callback=None, should_stop=None))
    seconds = time.perf_counter() - start
    raw = result.particles.detach()
    out_of_range = (~torch.isfinite(raw) | (raw.abs() > OUT_OF_RANGE)).double().mean(dim=1).numpy()
    outputs = torch.nan_to_num(raw, nan=0.0).clamp(-1.0, 1.0)
    blended = case.composite(plates, outputs)
    return RunScores(
        method, _mse_per_run(outputs, plates, 1.0 - case.mask), _mse_per_run(outputs, objects, case.mask),
        _predicted(experts, outputs) == case.target_class, _predicted(experts, blended) == case.target_class, out_of_range, product.nfe, product.passes, seconds,
    )


def alignment_gain(experts: DigitExperts, case: InsertionCase, data: DigitsData, reading: ConditioningReading, t: float, *, runs: int, seed: int = 0) -> float:
    """How hard the conditioning term pulls per unit ``w`` at level ``t``: the median over
    ``runs`` forward-noised composites ``x = (1 - t)·composite + t·ε`` of ``<v_c - a, d> / ‖d‖²``
    with ``a`` the child's aligned velocity at w = 1 and ``d = region·(v_c - v_p)`` (the
    child's and parent's velocities). At weight w the child's difference to the parent
    along ``d`` becomes ``(1 - w·gain)·d``: aligned at w·gain = 1, flipped and growing
    beyond 2. ``J ≈ I/t`` (a point-mass posterior) would give ``2/t``; ``J ≈ I`` (t near 1) 2."""
    plates, objects = case.pairs(data, runs)
    product, _ = build_product("product-fkc", experts, case, plates, objects, InsertionParams(), replace(reading, weight=1.0))
    link = reading.link(case.mask)
    child, parent = product.factors[link.child].expert, product.factors[link.parents[0]].expert
    noise = torch.randn(plates.shape, generator=torch.Generator().manual_seed(seed))
    x = (1.0 - t) * case.composite(plates, objects) + t * noise
    with torch.no_grad():
        target, velocity = parent.velocity(x, t), child.velocity(x, t)
    aligned = child.aligned_velocity(x, t, [target], link.region, 1.0)
    difference = link.region * (velocity - target)
    return float((((velocity - aligned) * difference).sum(dim=1) / difference.square().sum(dim=1)).median())


def _mse_per_run(outputs: Tensor, truth: Tensor, where: Tensor) -> np.ndarray:
    """Mean of ``(outputs - truth)²`` ``(N, 64)`` over the pixels where ``where`` ``(64,)``
    is 1, per row: ``(N,)`` float64."""
    return (((outputs - truth) ** 2 * where).sum(dim=1) / where.sum()).double().numpy()


def _predicted(experts: DigitExperts, outputs: Tensor) -> np.ndarray:
    """The classifier's classes ``(N,)`` of images ``(N, 64)``."""
    return experts.classifier.predict(outputs.numpy())


def _rmse(outputs: Tensor, truth: Tensor, where: Tensor) -> float:
    """Root-mean-square of ``outputs - truth`` ``(N, 64)`` over the pixels where ``where``
    ``(64,)`` is 1."""
    return math.sqrt(float(((outputs - truth) ** 2 * where).sum() / (where.sum() * outputs.shape[0])))


def class_accuracy(experts: DigitExperts, outputs: Tensor, target_class: int) -> float:
    """Fraction of ``outputs`` ``(N, 64)`` the classifier assigns to ``target_class``."""
    return float(np.mean(experts.classifier.predict(outputs.numpy()) == target_class))


@dataclass
class WeightSpread:
    """Feynman-Kac log-weights of the product per level (``levels[1:]``, the last at t = 0),
    without resampling: ``std`` the root-mean-square over runs of the across-particle std
    (ddof 1) of the weights accumulated since the start, ``ess_fraction`` the mean ESS / P
    of those weights; ``default_ess_fraction`` the mean ESS / P per level that the default
    sampler (with its ESS threshold) saw before deciding to resample, and
    ``resample_count`` its mean number of resamplings per run."""

    particles: int
    times: list[float]
    std: list[float]
    ess_fraction: list[float]
    default_ess_fraction: list[float]
    resample_count: float


def log_weight_spread(experts: DigitExperts, case: InsertionCase, data: DigitsData, *, particles: int, runs: int, seed: int = 0) -> WeightSpread:
    """Measure :class:`WeightSpread` for ``product-fkc``. The weights at level k come from a
    run on the first k + 1 levels with resampling off: with the same seed it draws the same
    numbers as the full run up to that level, and a sampler whose last level is above 0
    returns its weights there."""
    params = InsertionParams(particles=particles)
    levels, (plates, objects) = task_levels(params), case.pairs(data, runs)
    no_resampling = params.model_copy(update={"ess_threshold": 0.0})
    variances, ess = np.zeros((runs, len(levels) - 1)), np.zeros((runs, len(levels) - 1))
    default_ess, resamplings = [], []
    for run in range(runs):
        plate, object_image = plates[run], objects[run]
        for k in range(1, len(levels)):
            log_weights = sample_once("product-fkc", experts, case, plate, object_image, no_resampling, seed + run, levels[: k + 1]).log_weights.double()
            variances[run, k - 1] = float(log_weights.var()) if particles > 1 else 0.0
            ess[run, k - 1] = resampling.effective_sample_size(log_weights) / particles
        result = sample_once("product-fkc", experts, case, plate, object_image, params, seed + run)
        default_ess.append(np.asarray(result.ess_history) / particles)
        resamplings.append(result.resample_count)
    return WeightSpread(particles, levels[1:], np.sqrt(variances.mean(0)).tolist(), ess.mean(0).tolist(), np.mean(default_ess, axis=0).tolist(), float(np.mean(resamplings)))

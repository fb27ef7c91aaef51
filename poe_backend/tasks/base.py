"""What a task is: a parameter model, the passes it reads, and ``run(context)``.

A task reads a validated :class:`~poe_backend.bundle.Bundle`, samples from a product of
experts, and writes its outputs plus ``result.json`` (:data:`RESULT_FILE`) into
``context.out_dir``. The server and ``poe-backend run`` drive every task through this one
interface; progress goes through ``context.callback`` and cancellation through
``context.should_stop`` (both handed to the samplers).

Every subclass's ``run`` is a job entry (:func:`job_entry`, applied by
:meth:`Task.__init_subclass__`), so the server and the CLI get the same lifetime rules
without calling anything else: before the job, the model cache keeps only the roles the task
names in :meth:`Task.model_roles` (the previous job's other models are freed); after it, the
result's manifest gains ``memory`` — the peak device memory of the job
(``torch.cuda.max_memory_allocated``, reset at the start) and the process's peak host RSS
(``resource.getrusage``; a lifetime peak, the OS keeps no per-job figure).
"""

from __future__ import annotations

import functools
import inspect
import json
import resource
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Collection, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from poe_backend.bundle import Bundle
from poe_backend.sampling import SampleResult, sample_annealed_langevin, sample_fkc, sample_summed_velocity
from poe_backend.sampling.budget import passes_per_round, planned_forwards, planned_nfe
from poe_backend.sampling.run import Progress, checkpoint, stop_scope

RESULT_FILE = "result.json"
ResultKind = Literal["image", "video", "points"]

#: The samplers a task's ``sampler`` parameter may name (score-only: neural experts).
SAMPLERS: dict[str, Callable[..., SampleResult]] = {
    "fkc": sample_fkc,
    "annealed_langevin": sample_annealed_langevin,
    "summed_velocity": sample_summed_velocity,
}
SamplerName = Literal["fkc", "annealed_langevin", "summed_velocity"]


def metropolis_field() -> Any:
    """The ``metropolis`` parameter of the tasks that run Langevin correctors: off, because
    on learned experts the score-only Metropolis test rejects most moves and the rejection
    grows with dimension. In the 64-value digit miniature (a layout net × an inpainter) it
    accepted about half the moves at the tasks' step scale and few at twice that, without
    changing RMSE or class accuracy beyond noise; on the learned 2-D product it scored worse than ULA
    (a field that is not a gradient makes the test adjust towards the wrong target). Image
    latents have 10^5 values and video latents 10^6. On the analytic products, where the
    scores are exact, it is what brings the Feynman-Kac sampler close to the two-sample
    floor (:func:`poe_backend.sampling.samplers.sample_fkc`). Figures: README.md, The
    sampling math (``benchmarks/digits_insertion.py``, ``benchmarks/sampler_accuracy.py``)."""
    return Field(False, description="Metropolis-adjust the Langevin correctors (score-only trapezoid test); off: on learned experts it rejects most moves (fkc only)")


def transport_field() -> Any:
    """The ``transport`` parameter of the tasks that run ``fkc``
    (:func:`poe_backend.sampling.samplers.sample_fkc`): "euler" (Euler-Maruyama, level gaps
    too wide for a stable step split into counted substeps) by default; "exponential" solves
    the step exactly for the experts' clean predictions held fixed (one expert: the DDPM
    posterior step), needs no substeps and so costs fewer evaluations (insertion's counts:
    :class:`poe_backend.tasks.insertion.InsertionParams`), but it is biased: holding the
    clean prediction fixed drops its uncertainty, and the draw comes out too narrow.
    ``benchmarks/learned_experts.py --part transport`` (independent P = 1 runs, learned and
    exact experts, Euler vs exponential at the insertion presets' levels) measures it: the
    exponential step is further from the exact product in every case, with a smaller total
    variance, and more so at the preview's levels, where its half-cost run is worse than
    Euler's. On the autoregressive miniature it lost every cell
    (``benchmarks/learned_autoregressive.py --transport euler exponential``). Only the digit
    insertion miniature's known-pixel RMSE preferred it, by a slightly colder draw that an
    RMSE against one truth rewards (``benchmarks/digits_insertion.py``). Figures: README.md,
    Measurements (transport step, digit and autoregressive miniatures)."""
    return Field(
        "euler",
        description="fkc's transport step: euler (Euler-Maruyama, wide gaps split into substeps) or exponential "
        "(exact for fixed clean predictions, no substeps, cheaper but too narrow a draw)",
    )


def sampler_options(name: SamplerName, **options: Any) -> dict[str, Any]:
    """The ``options`` (e.g. ``langevin_steps``, ``step_scale``, ``metropolis``) that sampler
    ``name`` takes; the others are dropped."""
    accepted = inspect.signature(SAMPLERS[name]).parameters
    return {key: value for key, value in options.items() if key in accepted}


class TaskParams(BaseModel):
    """Base of every task's parameters: unknown names are errors, so typos are caught, and
    types are strict (``true`` is not the integer 1, ``6.0`` or ``"6"`` not the integer 6,
    ``1`` not a boolean; an integer is a valid float), so a wrong type is named, not guessed.

    ``preset`` "preview" gives the fields the caller did not set the task's :attr:`PREVIEW`
    values (small and fast: resolution, levels, particles); "quality" keeps the defaults.
    Tasks read their parameters through :meth:`effective`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    preset: Literal["quality", "preview"] = Field("quality", description="preview: small and fast defaults for the fields left unset")

    PREVIEW: ClassVar[dict[str, Any]] = {}

    def effective(self) -> Self:
        """These parameters with the preview values applied where the caller set nothing."""
        if self.preset != "preview":
            return self
        return self.model_copy(update={name: value for name, value in self.PREVIEW.items() if name not in self.model_fields_set})


@dataclass
class TaskContext:
    """Everything a run needs. ``models`` is a model preset ("tiny", "default", ...);
    ``device`` a torch device string."""

    bundle: Bundle
    params: TaskParams
    out_dir: Path
    models: str = "default"
    device: str = "cpu"
    callback: Callable[[Progress], None] | None = None
    should_stop: Callable[[], bool] | None = None


@dataclass
class TaskResult:
    """``kind`` says how the add-on loads it; ``primary`` names the main file in
    ``outputs`` (name -> path inside out_dir); ``manifest`` holds everything needed to
    reproduce the run (task, params, seed, models, sampler stats)."""

    kind: ResultKind
    primary: str
    outputs: dict[str, Path]
    manifest: dict[str, Any]

    def write(self, out_dir: Path) -> Path:
        """Write ``result.json`` atomically; returns its path."""
        data = {
            "kind": self.kind,
            "primary": self.primary,
            "outputs": {name: str(path.relative_to(out_dir)) for name, path in self.outputs.items()},
            **self.manifest,
        }
        path = out_dir / RESULT_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
        temporary.replace(path)
        return path


def seed_for(context: TaskContext) -> int:
    """The run's seed: the ``seed`` parameter when given, else the bundle's."""
    return context.bundle.seed if context.params.seed is None else context.params.seed


def cost_options(name: SamplerName, **options: Any) -> dict[str, Any]:
    """The options :func:`~poe_backend.sampling.budget.planned_nfe` counts
    (``langevin_steps``, ``transport``) as sampler ``name`` runs with ``options``: their
    values, else the sampler's defaults; those it does not take are left out."""
    taken = sampler_options(name, **options)
    return {key: taken.get(key, parameter.default) for key, parameter in inspect.signature(SAMPLERS[name]).parameters.items() if key in ("langevin_steps", "transport")}


def planned_sampler_cost(name: SamplerName, levels: list[float], *, expert_passes: list[int], total_weight: float, children: Collection[int] = (),
                         **options: Any) -> tuple[int, int]:
    """``(nfe, forwards)`` of :func:`run_sampler` running ``name`` over ``levels`` with
    ``options``, on a product of experts costing ``expert_passes`` forwards per evaluation
    (factor order), exponents summing to ``total_weight`` (the largest element of a map), and
    the conditioned ``children``: what its progress reports as ``planned_nfe`` and
    ``planned_forwards``, known before any expert exists."""
    nfe = planned_nfe(name, levels, num_experts=len(expert_passes), total_weight=total_weight, **cost_options(name, **options))
    return nfe, nfe // len(expert_passes) * passes_per_round(expert_passes, children)


def flux_tokens(height: int, width: int) -> int:
    """Latent tokens of one FLUX image of ``height`` × ``width`` pixels (multiples of 16):
    one packed token per 16×16 pixels (the 8× VAE and FLUX's 2×2 packing;
    ``families.flux.runtime.TOKEN_PIXELS``, not imported: that module loads diffusers, and
    the server computes costs without it)."""
    return (height // 16) * (width // 16)


@dataclass(frozen=True)
class JobCost:
    """What a job will compute, known at submit from its bundle and parameters alone
    (:meth:`Task.planned_cost`: no model is loaded, no device touched).

    * ``particles``: P; every particle is a full run (each forward is batched over them).
    * ``nfe``: expert evaluations per particle, summed over experts (``Progress.nfe``;
      closed-form experts count), over every run of the job.
    * ``forwards``: network forward-equivalents (``Progress.forwards``: true CFG makes an
      evaluation two, a conditioned child's backward adds two; closed-form experts none),
      over every run of the job: where the job is one sampler run it is exactly the
      ``planned_forwards`` its progress reports; an inversion before it
      (``ddim_inversion``, ``rf_solver``) is counted too.
    * ``tokens``: latent tokens one particle puts through one forward (FLUX
      ``(H/16)·(W/16)``; Wan the whole clip, ``F'·(H/16)·(W/16)``; FramePack one section,
      ``W·(H/16)·(W/16)``, its clean history not counted; toy2d 1, a 2-D point).
    * ``width``, ``height``: pixels of each image or frame the task generates (0: toy2d).
    * ``frames``: frames per particle (an image 1; toy2d 0).
    * ``exact``: False where ``nfe`` and ``forwards`` are an upper bound (regional_t2i's
      layout parser, whose regions are known only once it has run).

    The work unit is the *token-forward*: one particle's latent token through one network
    forward (:attr:`work`)."""

    particles: int
    nfe: int
    forwards: int
    tokens: int
    width: int = 0
    height: int = 0
    frames: int = 0
    exact: bool = True

    @property
    def pixels(self) -> int:
        """Pixels of one image or frame at the size the task generates."""
        return self.width * self.height

    @property
    def total_pixels(self) -> int:
        """Pixels of every frame of every particle: what the job decodes and writes."""
        return self.particles * self.frames * self.pixels

    @property
    def work(self) -> int:
        """Token-forwards: ``forwards × particles × tokens``; a job that runs no network
        (toy2d: closed-form experts, 0 forwards) counts each of its ``nfe`` evaluations as
        a forward."""
        return (self.forwards or self.nfe) * self.particles * self.tokens

    def describe(self) -> str:
        """One line a person reads: forwards (or evaluations), particles, tokens, size, work."""
        steps = f"{self.forwards:,} forwards" if self.forwards else f"{self.nfe:,} expert evaluations"
        size = f" ({self.frames} frames of {self.width}x{self.height})" if self.frames > 1 else f" ({self.width}x{self.height})" if self.frames else ""
        bound = "at most " if not self.exact else ""
        return f"{bound}{steps} × {self.particles:,} particles × {self.tokens:,} tokens{size} = {self.work:.3g} token-forwards"


def run_sampler(name: SamplerName, product: Any, noise: Any, levels: list[float], generator: Any, context: TaskContext, **options: Any) -> SampleResult:
    """Run sampler ``name`` with the task's callback and cancel flag; ``options`` (e.g.
    ``langevin_steps``, ``step_scale``, ``ess_threshold``, ``transport``) go to the samplers that take them.
    Every progress report carries the run's exact cost, known before it starts
    (``Progress.planned_nfe``: transport substeps included; ``planned_forwards``: the network
    forward-equivalents behind them), so the first report, after
    one step, already says what the whole run costs (options not given count at the
    sampler's own defaults)."""
    sampler, taken = SAMPLERS[name], sampler_options(name, **options)
    callback = context.callback
    if callback is not None:
        total = product.total_weight()
        planned = planned_nfe(name, levels, num_experts=len(product.factors), total_weight=float(total.max()) if hasattr(total, "max") else float(total), **cost_options(name, **taken))
        forwards = planned_forwards(product, planned)
        callback = lambda progress: context.callback(replace(progress, planned_nfe=planned, planned_forwards=forwards))  # noqa: E731
    return sampler(product, noise, levels, generator=generator, callback=callback, should_stop=context.should_stop, **taken)


class Task:
    """A task: subclasses set ``name``, ``Params`` and implement :meth:`run` (wrapped by
    :func:`job_entry`) and, to keep models loaded across jobs, :meth:`model_roles`."""

    name: ClassVar[str]
    Params: ClassVar[type[TaskParams]] = TaskParams
    kind: ClassVar[ResultKind] = "image"
    #: Video tasks: the model family whose native frame rate the clip is sampled and written
    #: at (``FamilyFacts.native_fps``); None for image tasks.
    video_family: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "run" in cls.__dict__:
            cls.run = job_entry(cls.__dict__["run"])

    def model_roles(self, context: TaskContext) -> list[str]:
        """Model roles this job may load; cached models of other roles are freed before
        it runs. The default, none, frees every cached model."""
        return []

    def run(self, context: TaskContext) -> TaskResult:
        raise NotImplementedError

    def planned_cost(self, bundle: Bundle, params: TaskParams) -> JobCost:
        """What :meth:`run` will compute for ``bundle`` and ``params`` (validated, as
        submitted: the preset is applied here), from those alone; cheap (no model, no
        device, no pixel read), so the server checks it at submit. Raises
        :class:`~poe_backend.bundle.BundleError` where the run would (a size above a cap, too
        few frames)."""
        raise NotImplementedError


def job_entry(run: Callable[[Task, TaskContext], TaskResult]) -> Callable[[Task, TaskContext], TaskResult]:
    """Wrap a task's ``run``: evict models the job does not need, reset the device's peak
    counter, run, and add ``manifest["memory"]`` (:func:`memory_report`). The whole run is
    a :func:`~poe_backend.sampling.run.stop_scope` of ``context.should_stop``, so a cancel
    lands at the next checkpoint (a model load, text encode, micro-batch or decode batch),
    not only at the next sampler step."""

    @functools.wraps(run)
    def run_job(self: Task, context: TaskContext) -> TaskResult:
        import torch

        from poe_backend.runtime.cache import MODEL_CACHE

        with stop_scope(context.should_stop):
            checkpoint()  # a job cancelled before it began keeps the previous job's models
            evicted = MODEL_CACHE.begin_job(self.model_roles(context), context.models)
            on_cuda = str(context.device).startswith("cuda") and torch.cuda.is_available()
            if on_cuda:
                torch.cuda.reset_peak_memory_stats(torch.device(context.device))
            result = run(self, context)
        result.manifest["memory"] = memory_report(context.device, evicted)
        return result

    return run_job


def memory_report(device: str, evicted: list[str]) -> dict[str, Any]:
    """``peak_device_bytes`` (CUDA: ``max_memory_allocated`` since the job began; None
    elsewhere), ``peak_host_rss_bytes`` (process lifetime peak, ``ru_maxrss`` in KiB on
    Linux), ``pinned_host_bytes`` at the job's end (the cached models' packed buffers plus
    torch's pinned allocator), the models evicted before the job and those loaded after it."""
    import torch

    from poe_backend.runtime.cache import MODEL_CACHE

    on_cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    return {
        "peak_device_bytes": torch.cuda.max_memory_allocated(torch.device(device)) if on_cuda else None,
        "peak_host_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "pinned_host_bytes": MODEL_CACHE.pinned_bytes() + (torch.cuda.host_memory_stats().get("allocated_bytes.current", 0) if on_cuda else 0),
        "evicted_before": evicted,
        "loaded_after": MODEL_CACHE.loaded_models(),
    }

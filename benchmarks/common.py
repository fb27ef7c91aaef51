"""What every per-family benchmark module shares: the result row, timing of expert forwards,
peak-VRAM and host-RSS measurement and building random-weight models from configs (no downloads).

A family module is ``benchmarks/bench_<family>.py`` exposing
``run(settings: Settings) -> list[Row]``; ``gpu_tasks.py`` discovers and runs every one.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

#: The explicit ``offload`` presets (``auto`` is the planner's choice among them). There is
#: no whole-model offload: moving a model per evaluation was what made it slow (issue 9).
OFFLOAD_PRESETS = ("none", "group", "sequential")


@dataclass(frozen=True)
class Settings:
    """``full``: full-size architectures on CUDA (else tiny ones on the CPU)."""

    device: str
    full: bool
    offloads: tuple[str, ...] = OFFLOAD_PRESETS
    particles: int = 2
    levels: int = 3
    langevin_steps: int = 1
    tasks: tuple[str, ...] = ()  # empty: all

    def wants(self, task: str) -> bool:
        return not self.tasks or task in self.tasks


@dataclass
class Row:
    task: str
    variant: str
    offload: str
    resolution: str
    particles: int
    seconds_per_level: float | None
    peak_vram_gib: float | None
    outside_forward_share: float | None
    nfe: int
    note: str = ""
    seconds_per_forward: float | None = None  # one batched expert forward (all particles)
    seconds_per_job: float | None = None  # sampler wall time of the whole run
    peak_host_gib: float | None = None  # RSS high-water since the row's models were placed

    HEADER = ("task", "variant", "offload", "resolution", "P", "s/level", "s/forward", "s/job", "peak VRAM GiB", "peak host GiB", "outside fwd", "NFE", "note")

    def cells(self) -> tuple[str, ...]:
        def number(value: float | None, digits: int) -> str:
            return "-" if value is None else f"{value:.{digits}f}"

        share = "-" if self.outside_forward_share is None else f"{100 * self.outside_forward_share:.1f}%"
        return (
            self.task, self.variant, self.offload, self.resolution, str(self.particles),
            number(self.seconds_per_level, 3), number(self.seconds_per_forward, 3), number(self.seconds_per_job, 2),
            number(self.peak_vram_gib, 2), number(self.peak_host_gib, 2), share, str(self.nfe), self.note,
        )


def table(rows: list[Row]) -> str:
    cells = [Row.HEADER] + [row.cells() for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(Row.HEADER))]
    lines = [" | ".join(value.ljust(width) for value, width in zip(line, widths)) for line in cells]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


@dataclass
class ForwardClock:
    """Sums the wall time (seconds, CUDA-synchronised) spent inside experts' ``velocity``."""

    device: str
    seconds: float = 0.0
    calls: int = 0

    def wrap(self, expert: Any) -> "TimedExpert":
        return TimedExpert(expert, self)


class TimedExpert:
    """An expert whose ``velocity`` is timed by a :class:`ForwardClock`; other attributes
    are the expert's. It refers to the expert, never the reverse, so dropping the row's
    references frees the expert and its transformer (no cycle through a patched method)."""

    def __init__(self, expert: Any, clock: ForwardClock) -> None:
        self.expert, self.clock = expert, clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["expert"], name)

    def velocity(self, x: torch.Tensor, t: float) -> torch.Tensor:
        synchronize(self.clock.device)
        start = time.perf_counter()
        result = self.expert.velocity(x, t)
        synchronize(self.clock.device)
        self.clock.seconds += time.perf_counter() - start
        self.clock.calls += 1
        return result


@contextlib.contextmanager
def peak_vram(device: str) -> Iterator[Callable[[], float | None]]:
    """Yields a function giving the peak allocated GiB since entry (None off CUDA). Enter
    it after the models are built and placed, so offload rows measure the run."""
    on_cuda = str(device).startswith("cuda")
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    yield (lambda: torch.cuda.max_memory_allocated() / 2**30) if on_cuda else (lambda: None)


@contextlib.contextmanager
def peak_host() -> Iterator[Callable[[], float]]:
    """Yields a function giving the process's RSS high-water in GiB since entry (Linux:
    resets ``VmHWM`` through ``/proc/self/clear_refs``, then reads it)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
    except OSError:
        pass
    yield _vm_hwm_gib


def _vm_hwm_gib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def random_model(build: Callable[[], torch.nn.Module], device: str, dtype: torch.dtype) -> torch.nn.Module:
    """Build on the meta device, materialise with ``to_empty`` directly on ``device`` in
    ``dtype`` and fill there with N(0, 0.02²) (1-D norm weights 1, scale-shift tables 0,
    buffers recomputed as zeros; fp32-kept modules as ``from_pretrained`` keeps them): no
    fp32 copy on the CPU, no slow default init of billions of weights."""
    with torch.device("meta"):
        model = build()
    model = model.to_empty(device=device).to(dtype)
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, child in model.named_modules():
        if any(part in keep for part in name.split(".")):
            child.to(torch.float32)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 1 and ("norm" in name or name.endswith("scale_shift_table")):
                parameter.fill_(1.0 if "norm" in name else 0.0)
            else:
                parameter.normal_(0.0, 0.02, generator=generator)
        for buffer in model.buffers():
            buffer.zero_()
    return model.eval().requires_grad_(False)


def free() -> None:
    """Collect garbage and return cached CUDA memory; callers drop their own references to
    the row's models first (``del``), so the next row starts from an empty device."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

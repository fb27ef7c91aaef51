"""What every per-family benchmark module shares: the result row, timing of expert forwards,
peak-VRAM measurement and building random-weight models from configs (no downloads).

A family module is ``benchmarks/bench_<family>.py`` exposing
``run(settings: Settings) -> list[Row]``; ``gpu_tasks.py`` discovers and runs every one.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

OFFLOAD_PRESETS = ("none", "model", "group", "sequential")


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

    HEADER = ("task", "variant", "offload", "resolution", "P", "s/level", "peak VRAM GiB", "outside fwd", "NFE", "note")

    def cells(self) -> tuple[str, ...]:
        def number(value: float | None, digits: int) -> str:
            return "-" if value is None else f"{value:.{digits}f}"

        share = "-" if self.outside_forward_share is None else f"{100 * self.outside_forward_share:.1f}%"
        return (self.task, self.variant, self.offload, self.resolution, str(self.particles), number(self.seconds_per_level, 3), number(self.peak_vram_gib, 2), share, str(self.nfe), self.note)


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
    """Wraps experts' ``velocity`` methods and sums the wall time spent inside them."""

    device: str
    seconds: float = 0.0
    calls: int = 0

    def wrap(self, expert: Any) -> Any:
        inner = expert.velocity

        def timed(x: torch.Tensor, t: float) -> torch.Tensor:
            synchronize(self.device)
            start = time.perf_counter()
            result = inner(x, t)
            synchronize(self.device)
            self.seconds += time.perf_counter() - start
            self.calls += 1
            return result

        expert.velocity = timed
        return expert


@contextlib.contextmanager
def peak_vram(device: str) -> Iterator[Callable[[], float | None]]:
    """Yields a function giving the peak allocated GiB since entry (None off CUDA)."""
    on_cuda = str(device).startswith("cuda")
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    yield (lambda: torch.cuda.max_memory_allocated() / 2**30) if on_cuda else (lambda: None)


def random_model(build: Callable[[], torch.nn.Module], device: str, dtype: torch.dtype) -> torch.nn.Module:
    """Build a model with random init directly on ``device`` in ``dtype`` (fast on a GPU, and
    never a full fp32 copy), in eval mode without gradients."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = build()
    finally:
        torch.set_default_dtype(previous)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def free(*modules: Any) -> None:
    """Drop modules and return their memory."""
    import gc

    del modules
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

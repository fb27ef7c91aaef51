"""RF-Solver (Wang et al. 2024, wangjiangshan0725/RF-Solver-Edit): a second-order solver of
the rectified-flow ODE ``dx/dt = v(x, t)``, used for inversion (t: 0 -> 1) and editing
(t: 1 -> 0). Torch-only; works with any :class:`GenerativeExpert`.

Step with ``h = t_{i+1} - t_i``: ``v1 = v(x, t_i)``, ``x_mid = x + h/2·v1``,
``v2 = v(x_mid, t_i + h/2)``, ``x <- x + h·v1 + ½h²·(v2 - v1)/(h/2)`` (MODELS.md). Two
expert forwards per step.

Feature sharing (:class:`ValueSharing`): the self-attention V of the last single-stream
FLUX blocks is stored during the last ``inject`` inversion steps and injected in the first
``inject`` editing steps (they cover the same time intervals, traversed in reverse). It is
done with forward hooks on each block's ``attn.to_v``; stored tensors live on the CPU, as
RF-Solver-Edit keeps them.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from poe_backend.sampling import GenerativeExpert, Progress, SamplingCancelled


def rf_solver(
    expert: GenerativeExpert,
    x: Tensor,
    times: list[float],
    *,
    callback: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    nfe_offset: int = 0,
    level_offset: int = 0,
    num_levels: int | None = None,
    before_forward: Callable[[int, int], None] | None = None,
) -> tuple[Tensor, int]:
    """Integrate from ``times[0]`` to ``times[-1]`` (either direction). Returns the final
    ``x`` and the number of expert forwards. Progress counts one level per step, from
    ``level_offset + 1`` out of ``num_levels`` (default: this call's steps), so inversion
    and editing can report as one run. ``before_forward(step, which)`` is called before each
    forward (``step`` from 1, ``which`` 0 for ``v1``, 1 for ``v2``)."""
    nfe = 0
    num_levels = len(times) - 1 if num_levels is None else num_levels
    for step, (t, t_next) in enumerate(zip(times[:-1], times[1:]), start=1):
        h = t_next - t
        if before_forward is not None:
            before_forward(step, 0)
        v1 = expert.velocity(x, t)
        if before_forward is not None:
            before_forward(step, 1)
        v2 = expert.velocity(x + 0.5 * h * v1, t + 0.5 * h)
        x = x + h * v1 + 0.5 * h * h * (v2 - v1) / (0.5 * h)
        nfe += 2
        if callback is not None:
            callback(Progress(level_offset + step, num_levels, 0, t_next, nfe_offset + nfe, None))
        if should_stop is not None and should_stop():
            raise SamplingCancelled(f"cancelled at step {step}")
    return x, nfe


def inversion_times(num_steps: int, t_max: float = 1.0) -> list[float]:
    """``num_steps + 1`` times from 0 up to ``t_max`` (linear; FLUX's shift can be applied by
    the caller)."""
    return torch.linspace(0.0, t_max, num_steps + 1).tolist()


class ValueSharing:
    """Store and inject the attention V of the last ``num_blocks`` single-stream blocks of a
    FLUX transformer, keyed by (time interval, forward within the step, block).

    ``num_intervals`` is the number of solver steps K each way; interval ``i`` is
    ``[times[i], times[i+1]]`` of the ascending inversion grid. Use :meth:`inversion_hook`
    and :meth:`editing_hook` as ``before_forward`` of :func:`rf_solver`; call :meth:`remove`
    when done. ``inject`` = 0 disables sharing.
    """

    def __init__(self, transformer: torch.nn.Module, num_intervals: int, *, inject: int = 2, num_blocks: int = 18) -> None:
        self.num_intervals, self.inject = num_intervals, min(inject, num_intervals)
        self.mode, self.key = "off", (0, 0)
        self.stored: dict[tuple[int, int, int], Tensor] = {}
        blocks = list(transformer.single_transformer_blocks)[-num_blocks:] if num_blocks > 0 else []
        self.handles = [block.attn.to_v.register_forward_hook(self._hook(index)) for index, block in enumerate(blocks)]

    def _hook(self, index: int):
        def hook(module: torch.nn.Module, inputs: tuple, output: Tensor) -> Tensor | None:
            key = (*self.key, index)
            if self.mode == "store":
                self.stored[key] = output.detach().to("cpu", copy=True)
            elif self.mode == "inject" and key in self.stored:
                return self.stored[key].to(output.device, output.dtype)
            return None

        return hook

    def _shared(self, interval: int) -> bool:
        return interval >= self.num_intervals - self.inject

    def inversion_hook(self, step: int, which: int) -> None:
        interval = step - 1  # ascending: step s covers interval s - 1
        self.key, self.mode = (interval, which), "store" if self._shared(interval) else "off"

    def editing_hook(self, step: int, which: int) -> None:
        interval = self.num_intervals - step  # descending: step s covers interval K - s
        self.key, self.mode = (interval, which), "inject" if self._shared(interval) else "off"

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles, self.stored, self.mode = [], {}, "off"

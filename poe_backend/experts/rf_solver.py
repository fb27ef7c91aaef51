"""RF-Solver (Wang et al. 2024, wangjiangshan0725/RF-Solver-Edit): a second-order solver of
the rectified-flow ODE ``dx/dt = v(x, t)``, used for inversion (t: 0 -> 1) and editing
(t: 1 -> 0). Torch-only; works with any :class:`GenerativeExpert`.

Step with ``h = t_{i+1} - t_i``: ``v1 = v(x, t_i)``, ``x_mid = x + h/2·v1``,
``v2 = v(x_mid, t_i + h/2)``, ``x <- x + h·v1 + ½h²·(v2 - v1)/(h/2)`` (MODELS.md). Two
expert forwards per step.

Not implemented: the paper's attention-V sharing between inversion and editing (the V of the
last single-stream blocks stored during the last ``inject`` inversion steps and injected in
the first ``inject`` editing steps). Without it the edit follows the inverted noise only, a
weaker structure preservation than the published baseline.
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
) -> tuple[Tensor, int]:
    """Integrate from ``times[0]`` to ``times[-1]`` (either direction). Returns the final
    ``x`` and the number of expert forwards. Progress counts one level per step, from
    ``level_offset + 1`` out of ``num_levels`` (default: this call's steps), so inversion
    and editing can report as one run."""
    nfe = 0
    num_levels = len(times) - 1 if num_levels is None else num_levels
    for step, (t, t_next) in enumerate(zip(times[:-1], times[1:]), start=1):
        h = t_next - t
        v1 = expert.velocity(x, t)
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

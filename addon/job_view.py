"""What the panel shows for jobs and for the next generation, in plain Python (no bpy).

The panel (:func:`.operators_jobs.draw_jobs`, :class:`.panel.POE_PT_main`) only lays out
what these functions return, so they are tested directly.
"""

from __future__ import annotations

import math
import re
import textwrap
from typing import Any

from .bundle_schema import VIDEO_MAX_FRAMES, VIDEO_MAX_SIDE, VIDEO_TASKS, capped_video_size, frames_at_rate

#: The parameters an out-of-memory failure asks to lower (the server's advice names them).
OUT_OF_MEMORY_PARAMETERS = ("preset", "particles", "levels", "offload")
PULL_COMMAND = re.compile(r"poe-backend models pull[^;)\n`'\"]*")
LINE_WIDTH = 60


def progress_details(progress: dict[str, Any] | None) -> str:
    """``level 4/10  NFE 37/58  forwards 74/116  ESS 51  ETA 3s  elapsed 12s`` from a job's
    ``progress`` record (fields that are missing, or not finite numbers, are left out: the
    record comes from the backend and must not break the panel; ``/58`` is the run's
    planned cost). NFE counts expert evaluations, forwards the network passes behind them
    (true classifier-free guidance: two per evaluation; a conditioning term's backward: two
    more), shown when they differ from the evaluations."""
    values = {key: value for key, value in (progress or {}).items() if _finite(value)}
    parts = []
    if values.get("num_levels"):
        parts.append(f"level {values.get('level', 0):.0f}/{values['num_levels']:.0f}")
    if "nfe" in values:
        parts.append(f"NFE {values['nfe']:.0f}" + (f"/{values['planned_nfe']:.0f}" if values.get("planned_nfe") else ""))
    if "forwards" in values and (values.get("forwards"), values.get("planned_forwards")) != (values.get("nfe"), values.get("planned_nfe")):
        parts.append(f"forwards {values['forwards']:.0f}" + (f"/{values['planned_forwards']:.0f}" if values.get("planned_forwards") else ""))
    for key, label, unit in (("ess", "ESS", ""), ("eta_s", "ETA", "s"), ("elapsed_s", "elapsed", "s")):
        if key in values:
            parts.append(f"{label} {values[key]:.0f}{unit}")
    return "  ".join(parts)


def backend_line(health: dict[str, Any], started: str, url: str) -> str:
    """The panel's line about the backend from its ``/v1/health`` answer: version, how it
    was found (``started``), its first device and its worker count (``workers``; an older
    backend lists only ``devices``)."""
    count = len(health.get("workers", health.get("devices")) or [])
    return f"backend {health.get('version')} {started} on {health.get('device')}, {count} worker{'' if count == 1 else 's'}, at {url}"


def _finite(value: Any) -> bool:
    """A real, finite number (not a bool, a string or NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def failure_lines(error: dict[str, Any] | None, fallback: str = "") -> list[str]:
    """A failed job's reason and what to do, as short lines: the reason first, then for
    ``missing_weights`` the exact ``poe-backend models pull ...`` command and for
    ``out_of_memory`` the parameters to lower."""
    error = error or {}
    message, code = str(error.get("message") or fallback), error.get("code")
    lines = textwrap.wrap(message, LINE_WIDTH)[:3] or [code or "failed"]
    if code == "missing_weights" and (command := PULL_COMMAND.search(message)):
        lines.append(f"Run: {command.group(0).strip()}")
    elif code == "out_of_memory":
        lines.append(f"Lower one of: {', '.join(OUT_OF_MEMORY_PARAMETERS)}")
    return lines


def task_defaults(tasks: list[dict[str, Any]] | None, task: str) -> dict[str, Any]:
    """Parameter defaults of ``task`` from ``GET /v1/tasks`` (empty when unknown)."""
    for entry in tasks or []:
        if entry.get("name") == task:
            return {parameter["name"]: parameter.get("default") for parameter in entry.get("parameters", [])}
    return {}


def generated_size(task: str, width: int, height: int, frames: list[int], scene_fps: float, tasks: list[dict[str, Any]] | None = None) -> str:
    """What the backend will generate, e.g. ``832x464, 81 frames at 16 fps`` for a
    1920x1080 sim2video capture of 250 frames at 24 fps: video tasks sample the capture
    (scene ``frames`` at ``scene_fps``) by time at the task's model rate (``fps`` from
    ``/v1/tasks``; the one rule, ``frames_at_rate``) and go through the backend's cap rule
    with the task's ``max_side``/``max_frames`` defaults (the constants when the backend was
    not reached, and then the frames are counted at the scene rate); image tasks are one
    frame at the captured size."""
    if task not in VIDEO_TASKS:
        return f"{width}x{height}, 1 image"
    defaults = task_defaults(tasks, task)
    fps = next((entry.get("fps") for entry in tasks or [] if entry.get("name") == task), None) or scene_fps
    num_frames = len(frames_at_rate(frames, scene_fps, fps)) if frames else 0
    capped_width, capped_height, count = capped_video_size(
        width, height, num_frames,
        max_side=defaults.get("max_side") or VIDEO_MAX_SIDE, max_frames=defaults.get("max_frames") or VIDEO_MAX_FRAMES,
    )
    return f"{capped_width}x{capped_height}, {count} frames at {fps:g} fps"

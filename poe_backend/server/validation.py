"""Checks a submission before it is queued, so bad input fails fast with the field named:
the task, the bundle (schema, passes, files: PNG headers through PIL, depth EXRs through
OpenEXR with their values checked, image sizes) and the parameters (the task's pydantic
model; errors mapped to ``params.<path>``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import OpenEXR
from PIL import Image
from pydantic import ValidationError

from poe_backend.bundle import FRAME_TOKEN, Bundle, BundleError, read_bundle
from poe_backend.server.errors import InputError
from poe_backend.tasks import TASK_CLASSES, get_task
from poe_backend.tasks.base import Task, TaskParams


def resolve_task(name: Any) -> Task:
    if not isinstance(name, str) or name not in TASK_CLASSES:
        raise InputError("task", f"unknown task {name!r}; known: {', '.join(TASK_CLASSES)}", code="unknown_task")
    return get_task(name)


def load_bundle(root: Path, task_name: str | None) -> Bundle:
    """Read and validate the bundle; its task must be the requested one (if given)."""
    try:
        bundle = read_bundle(root)
    except BundleError as error:
        raise InputError(error.field, error.message, code="invalid_bundle") from None
    if task_name is not None and bundle.task != task_name:
        raise InputError("task", f"the bundle was captured for task {bundle.task!r}, not {task_name!r}", code="invalid_bundle")
    check_pass_files(bundle)
    return bundle


def validate_params(task: Task, bundle_params: dict[str, Any], request_params: dict[str, Any] | None) -> TaskParams:
    """The task's parameters: the bundle's, overridden by the request's."""
    if request_params is not None and not isinstance(request_params, dict):
        raise InputError("params", "must be a JSON object", code="invalid_params")
    merged = {**bundle_params, **(request_params or {})}
    try:
        return task.Params.model_validate(merged)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(["params", *(str(part) for part in first["loc"])])
        raise InputError(field, f"{first['msg']} (got {first.get('input')!r})", code="invalid_params") from None


def png_size(path: Path, field: str) -> tuple[int, int]:
    """``(width, height)`` of a PNG, from its header (PIL reads no pixels here)."""
    try:
        with Image.open(path) as image:
            kind, size = image.format, image.size
    except Exception as error:  # PIL raises OSError, ValueError, DecompressionBombError, ...
        raise InputError(field, f"{path.name} is not a readable PNG ({error})", code="invalid_bundle") from None
    if kind != "PNG":
        raise InputError(field, f"{path.name} must be a PNG, but it is {kind or 'not an image'}", code="invalid_bundle")
    return size


def depth_size(path: Path, field: str) -> tuple[int, int]:
    """``(width, height)`` of a depth EXR, after checking its values: channel ``Z``,
    camera Z in scene units, each pixel either finite and >= 0 or ``+inf`` (background),
    and at least one finite pixel. OpenEXR parses the file (it refuses malformed headers
    at once, rather than looping on them)."""
    try:
        with OpenEXR.File(str(path), separate_channels=True) as exr:
            channels = exr.channels()
            if "Z" not in channels:
                raise InputError(field, f"{path.name} has no channel 'Z' (has {', '.join(channels) or 'none'})", code="invalid_bundle")
            depth = np.asarray(channels["Z"].pixels)
    except InputError:
        raise
    except Exception as error:  # OpenEXR raises plain RuntimeError / OSError for bad files
        raise InputError(field, f"{path.name} is not a readable OpenEXR file ({error})", code="invalid_bundle") from None
    check_depth_values(depth, field, path.name)
    return depth.shape[1], depth.shape[0]


def check_depth_values(depth: np.ndarray, field: str, name: str) -> None:
    """Camera Z ``(H, W)`` of file ``name``: no NaN, nothing negative (``-inf`` included),
    not all ``+inf``."""
    if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
        raise InputError(field, f"{name}: channel 'Z' must be a 2-D float image, got {depth.dtype} of shape {depth.shape}", code="invalid_bundle")
    for what, bad in (("NaN", np.isnan(depth)), ("negative", depth < 0)):
        if bad.any():
            row, column = np.argwhere(bad)[0]
            raise InputError(field, f"{name}: depth has {what} values ({int(bad.sum())} pixels, first at x={column}, y={row}); camera Z must be >= 0, +inf for background", code="invalid_bundle")
    if not np.isfinite(depth).any():
        raise InputError(field, f"{name}: every depth pixel is background (+inf): nothing in view", code="invalid_bundle")


def check_pass_files(bundle: Bundle) -> None:
    """Every pass file must be of its format (``depth``: OpenEXR with valid values, every
    other pass: PNG) and ``width x height`` as bundle.json says."""
    for name, pattern in bundle.passes.items():
        field = f"passes.{name}"
        read_size = depth_size if name == "depth" else png_size
        for frame in bundle.frames if FRAME_TOKEN in pattern else [None]:
            path = bundle.pass_path(name, frame)
            size = read_size(path, field)
            if size != (bundle.width, bundle.height):
                relative = path.relative_to(bundle.root)
                message = f"{relative} is {size[0]}x{size[1]} but bundle.json says width={bundle.width}, height={bundle.height}"
                raise InputError(field, message, code="invalid_bundle")

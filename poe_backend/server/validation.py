"""Checks a submission before it is queued, so bad input fails fast with the field named:
the task, the bundle (schema, limits, passes, files: PNG headers through PIL, depth EXR
headers through OpenEXR, image sizes) and the parameters (size, then the task's pydantic
model; errors mapped to ``params.<path>``).

The server reads only file headers, never pixels: a small compressed file can decode to
gigabytes (a 1.1 MiB EXR of 16384² is 1 GiB of float32). Depth values (NaN, negative,
nothing in view) are checked where the job decodes them
(:func:`poe_backend.tasks.images.read_depth`), and fail the job naming ``passes.depth``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import OpenEXR
from PIL import Image
from pydantic import ValidationError

from poe_backend.bundle import FRAME_TOKEN, Bundle, BundleError, read_bundle
from poe_backend.server.errors import InputError
from poe_backend.tasks import TASK_CLASSES, get_task
from poe_backend.tasks.base import Task, TaskParams

#: Largest params object, as JSON text (characters, non-ASCII escaped): the job's record
#: stores and echoes them. Every task's parameters but a toy spec are a few hundred bytes.
MAX_PARAMS_CHARS = 64 << 10


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
    """The task's parameters: the bundle's, overridden by the request's; together at most
    :data:`MAX_PARAMS_CHARS` as JSON (413 naming ``params`` past it)."""
    if request_params is not None and not isinstance(request_params, dict):
        raise InputError("params", "must be a JSON object", code="invalid_params")
    merged = {**bundle_params, **(request_params or {})}
    size = len(json.dumps(merged))
    if size > MAX_PARAMS_CHARS:
        raise InputError("params", f"are {size / 1024:.0f} KiB as JSON; at most {MAX_PARAMS_CHARS >> 10} KiB", code="too_large", status=413)
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
    """``(width, height)`` of a depth EXR from its header (OpenEXR reads no pixels here, and
    refuses malformed headers at once rather than looping on them): a flat image (not
    deep) with a channel ``Z``. Its pixel type and values are checked when the job reads
    it (:func:`poe_backend.tasks.images.read_depth`): OpenEXR's header-only read does not
    give channel types."""
    try:
        with OpenEXR.File(str(path), header_only=True) as exr:
            header = dict(exr.header())  # a copy: closing the file empties the header
    except Exception as error:  # OpenEXR raises plain RuntimeError / OSError for bad files
        raise InputError(field, f"{path.name} is not a readable OpenEXR file ({error})", code="invalid_bundle") from None
    channels = [channel.name for channel in header["channels"]]
    if "Z" not in channels:
        raise InputError(field, f"{path.name} has no channel 'Z' (has {', '.join(channels) or 'none'})", code="invalid_bundle")
    if header.get("type") in (OpenEXR.deepscanline, OpenEXR.deeptile):
        raise InputError(field, f"{path.name} is a deep image; depth must be a flat (scanline or tiled) EXR", code="invalid_bundle")
    low, high = header["dataWindow"]
    return int(high[0]) - int(low[0]) + 1, int(high[1]) - int(low[1]) + 1


def check_pass_files(bundle: Bundle) -> None:
    """Every pass file must be of its format (``depth``: OpenEXR, every other pass: PNG)
    and ``width x height`` as bundle.json says (at most
    :data:`~poe_backend.bundle.MAX_FRAME_PIXELS`), read from the file's header."""
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

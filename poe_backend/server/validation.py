"""Checks a submission before it is queued, so bad input fails fast with the field named:
the task, the bundle (schema, passes, files, image sizes from PNG/EXR headers) and the
parameters (the task's pydantic model; errors mapped to ``params.<path>``)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from poe_backend.bundle import FRAME_TOKEN, Bundle, BundleError, read_bundle
from poe_backend.server.errors import InputError
from poe_backend.tasks import TASK_CLASSES, get_task
from poe_backend.tasks.base import Task, TaskParams

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXR_MAGIC = 20000630


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
    check_image_sizes(bundle)
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


def image_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG or OpenEXR header; None for other formats."""
    with open(path, "rb") as handle:
        head = handle.read(65536)
    if head.startswith(PNG_SIGNATURE) and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    if len(head) >= 8 and struct.unpack("<i", head[:4])[0] == EXR_MAGIC:
        return _exr_data_window(head)
    return None


def _exr_data_window(head: bytes) -> tuple[int, int] | None:
    position = 8
    while position < len(head):
        name_end = head.index(b"\0", position)
        name = head[position:name_end]
        if not name:
            return None
        type_end = head.index(b"\0", name_end + 1)
        (size,) = struct.unpack("<i", head[type_end + 1 : type_end + 5])
        value = head[type_end + 5 : type_end + 5 + size]
        if name == b"dataWindow":
            x_min, y_min, x_max, y_max = struct.unpack("<iiii", value)
            return x_max - x_min + 1, y_max - y_min + 1
        position = type_end + 5 + size
    return None


def check_image_sizes(bundle: Bundle) -> None:
    """Every pass image must be ``width x height`` (read from the file headers)."""
    for name, pattern in bundle.passes.items():
        frames = bundle.frames if FRAME_TOKEN in pattern else [None]
        for frame in frames:
            path = bundle.pass_path(name, frame)
            try:
                size = image_size(path)
            except (OSError, ValueError, struct.error) as error:
                raise InputError(f"passes.{name}", f"cannot read the header of {path.name} ({error})", code="invalid_bundle") from None
            if size is not None and size != (bundle.width, bundle.height):
                relative = path.relative_to(bundle.root)
                message = f"{relative} is {size[0]}x{size[1]} but bundle.json says width={bundle.width}, height={bundle.height}"
                raise InputError(f"passes.{name}", message, code="invalid_bundle")

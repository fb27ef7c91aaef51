"""What ``GET /v1/health`` and ``GET /v1/tasks`` report: the workers with their devices,
memory and loaded models (as their job processes last reported them:
:meth:`~poe_backend.server.executor.Worker.describe`), and each task's parameters (JSON
schema plus a flat list for the add-on's UI)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from poe_backend.bundle import TASK_PASSES
from poe_backend.models.specs import family_facts
from poe_backend.server.executor import Worker
from poe_backend.tasks import get_task


def describe_task(name: str) -> dict[str, Any]:
    """A task's passes, result kind, frame rate (video tasks: the model's native rate the
    simulation is sampled at; None for images) and parameters (JSON schema plus a flat list
    with type, default, minimum and maximum for the add-on's UI)."""
    try:
        task = get_task(name)
    except Exception as error:  # noqa: BLE001 - one broken task must not hide the others
        return {"name": name, "available": False, "error": f"{type(error).__name__}: {error}"}
    schema = task.Params.model_json_schema()
    parameters = []
    for key, prop in schema.get("properties", {}).items():
        ranged = next((option for option in prop.get("anyOf", []) if "minimum" in option or "maximum" in option), prop)
        parameters.append({
            "name": key,
            "type": _json_type(prop),
            "default": prop.get("default"),
            "minimum": ranged.get("minimum", ranged.get("exclusiveMinimum")),
            "maximum": ranged.get("maximum", ranged.get("exclusiveMaximum")),
            "description": prop.get("description", ""),
        })
    fps = None if task.video_family is None else family_facts()[task.video_family].native_fps
    return {"name": name, "available": True, "kind": task.kind, "fps": fps, "passes": list(TASK_PASSES.get(name, ())), "parameters": parameters, "schema": schema}


def _json_type(prop: dict[str, Any]) -> str:
    """``integer``, ``number``, ... ; optional fields (``anyOf`` with null) give their
    non-null type plus ``|null``."""
    if "type" in prop:
        return prop["type"]
    kinds = [option.get("type", "any") for option in prop.get("anyOf", [])]
    named = [kind for kind in kinds if kind != "null"]
    return "|".join(named + (["null"] if "null" in kinds else [])) or "any"


def device_info(device: str, memory: tuple[int | None, int | None]) -> dict[str, Any]:
    """``device``, the torch version and ``memory`` (free, total VRAM bytes as the device's
    job process last read them; None off CUDA)."""
    import torch

    return {"device": device, "torch": torch.__version__, "vram_free_bytes": memory[0], "vram_total_bytes": memory[1]}


def workers_info(workers: Sequence[Worker], devices: list[str]) -> dict[str, Any]:
    """``/v1/health``'s worker fields for the attached ``workers``: the first one's
    :func:`device_info` (``devices[0]``, memory unknown, while none is attached: Ray still
    starting), ``loaded_models`` (all workers' together, sorted), ``loaded_models_per_device``
    (per worker, in ``workers`` order) and ``workers`` (each one's ``describe()``: node,
    device, memory_free, memory_total, loaded_models, state)."""
    first = device_info(workers[0].device, workers[0].device_memory()) if workers else device_info(devices[0], (None, None))
    loaded = [list(worker.loaded_models) for worker in workers]
    return {**first, "loaded_models": sorted({name for names in loaded for name in names}), "loaded_models_per_device": loaded, "workers": [worker.describe() for worker in workers]}

"""Tasks by name. Each task lives in its own module and is imported only when used, so
listing tasks never loads a model family it does not need."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the package stays importable without torch (the weights manager reads requirements)
    from poe_backend.tasks.base import Task

#: Task name -> "module:ClassName".
TASK_CLASSES: dict[str, str] = {
    "toy2d": "poe_backend.tasks.toy2d:Toy2DTask",
    "insertion": "poe_backend.tasks.insertion:InsertionTask",
    "regional_t2i": "poe_backend.tasks.regional_t2i:RegionalT2ITask",
    "sim2video": "poe_backend.tasks.sim2video:Sim2VideoTask",
    "sim2video_ar": "poe_backend.tasks.sim2video_ar:Sim2VideoARTask",
}


def task_names() -> list[str]:
    return list(TASK_CLASSES)


def get_task(name: str) -> "Task":
    """An instance of the task called ``name``; ``KeyError`` names the known ones."""
    if name not in TASK_CLASSES:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(TASK_CLASSES)}")
    module_name, class_name = TASK_CLASSES[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)()

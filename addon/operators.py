"""Operators: thin wrappers that read ``scene.poe`` and call plain functions."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import bpy

from . import preferences, properties
from .capture import CaptureError, capture_bundle


def capture_scene(context, output_dir: Path, progress: Callable[[int, int], None] | None = None) -> Path:
    """Capture ``context.scene`` with its PoE settings (``scene.poe``) into a new bundle
    folder under ``output_dir``; returns bundle.json (also stored as ``last_bundle``).
    The one capture call of the add-on: Capture and Generate both use it."""
    scene, settings = context.scene, context.scene.poe
    out_dir = output_dir / f"{bpy.path.clean_name(scene.name)}_{settings.task}_{time.strftime('%Y%m%d-%H%M%S')}"
    items = [item for item in settings.objects if item.object is not None]
    path = capture_bundle(
        scene, out_dir, task=settings.task, frames=properties.capture_frames(settings),
        objects=[item.object.name for item in items] or None,
        object_prompts={item.object.name: item.prompt for item in items if item.prompt} or None,
        prompt=settings.prompt, params=properties.backend_params(settings), quality=settings.preset, seed=settings.seed,
        resolution=properties.capture_resolution(settings), progress=progress,
    )
    settings.last_bundle = str(path)
    return Path(path)


class POE_OT_capture(bpy.types.Operator):
    """Render the passes the chosen task needs into a scene bundle"""

    bl_idname = "poe.capture"
    bl_label = "Capture"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context) -> bool:
        return context.scene is not None and context.scene.camera is not None

    def execute(self, context):
        window_manager = context.window_manager
        window_manager.progress_begin(0, 100)
        try:
            path = capture_scene(
                context, preferences.backend_settings(context).output_dir,
                progress=lambda done, total: window_manager.progress_update(int(100 * done / max(total, 1))),
            )
        except CaptureError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        finally:
            window_manager.progress_end()
        self.report({"INFO"}, f"Captured {path}")
        return {"FINISHED"}


class POE_OT_object_add(bpy.types.Operator):
    """Add the selected objects (or the active one) to the PoE object list"""

    bl_idname = "poe.object_add"
    bl_label = "Add Selected"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        settings = context.scene.poe
        present = {item.object for item in settings.objects}
        chosen = list(getattr(context, "selected_objects", None) or []) or [context.active_object]
        for obj in chosen:
            if obj is not None and obj not in present:
                item = settings.objects.add()
                item.object = obj
                item.prompt = str(obj.get("poe_prompt", ""))
        settings.active_object_index = len(settings.objects) - 1
        return {"FINISHED"}


class POE_OT_object_remove(bpy.types.Operator):
    """Remove the highlighted object from the PoE object list"""

    bl_idname = "poe.object_remove"
    bl_label = "Remove"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        settings = context.scene.poe
        if 0 <= settings.active_object_index < len(settings.objects):
            settings.objects.remove(settings.active_object_index)
            settings.active_object_index = max(0, settings.active_object_index - 1)
        return {"FINISHED"}

"""Operators: thin wrappers that read ``scene.poe`` and call plain functions."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import bpy

from .capture import CaptureError, capture_bundle
from .preferences import prefs
from .properties import backend_params, capture_frames, capture_resolution


def output_root(context) -> Path:
    """The preferences' output folder; else ``poe/`` beside the saved .blend; else a temp dir."""
    preferences = prefs(context)
    configured = preferences.output_dir if preferences is not None else ""
    if configured:
        return Path(bpy.path.abspath(configured))
    if bpy.data.filepath:
        return Path(bpy.data.filepath).parent / "poe"
    return Path(tempfile.gettempdir()) / "poe"


class POE_OT_capture(bpy.types.Operator):
    """Render the passes the chosen task needs into a scene bundle"""

    bl_idname = "poe.capture"
    bl_label = "Capture"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context) -> bool:
        return context.scene is not None and context.scene.camera is not None

    def execute(self, context):
        scene, settings = context.scene, context.scene.poe
        out_dir = output_root(context) / f"{bpy.path.clean_name(scene.name)}_{settings.task}_{time.strftime('%Y%m%d-%H%M%S')}"
        items = [item for item in settings.objects if item.object is not None]
        window_manager = context.window_manager
        window_manager.progress_begin(0, 100)
        try:
            path = capture_bundle(
                scene, out_dir, task=settings.task, frames=capture_frames(settings),
                objects=[item.object.name for item in items] or None,
                object_prompts={item.object.name: item.prompt for item in items if item.prompt} or None,
                prompt=settings.prompt, params=backend_params(settings), quality=settings.preset, seed=settings.seed,
                resolution=capture_resolution(settings),
                progress=lambda done, total: window_manager.progress_update(int(100 * done / max(total, 1))),
            )
        except CaptureError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        finally:
            window_manager.progress_end()
        settings.last_bundle = str(path)
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

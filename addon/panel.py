"""The 3D viewport sidebar panel ("PoE" tab)."""

from __future__ import annotations

import bpy

from . import job_view, operators_jobs, properties
from .capture import CaptureError, planned_size

#: Action buttons in drawing order: (operator idname, icon).
ACTIONS = (("poe.capture", "RENDER_STILL"), ("poe.generate", "PLAY"), ("poe.cancel", "CANCEL"))


class POE_UL_objects(bpy.types.UIList):
    """Objects with their per-object prompts."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_property, index=0, flt_flag=0):
        row = layout.row(align=True)
        row.prop(item, "object", text="", emboss=False, icon="OBJECT_DATA")
        row.prop(item, "prompt", text="")


class POE_PT_main(bpy.types.Panel):
    """Task, prompt, objects, frames, sampler settings and the action buttons."""

    bl_idname = "POE_PT_main"
    bl_label = "Product of Experts"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "PoE"

    def draw(self, context) -> None:
        layout, settings = self.layout, context.scene.poe
        layout.prop(settings, "task")
        layout.prop(settings, "preset")
        layout.prop(settings, "prompt")
        layout.label(text="Objects")
        row = layout.row()
        row.template_list("POE_UL_objects", "", settings, "objects", settings, "active_object_index", rows=3)
        column = row.column(align=True)
        column.operator("poe.object_add", text="", icon="ADD")
        column.operator("poe.object_remove", text="", icon="REMOVE")
        self._draw_frames_and_resolution(layout, settings)
        layout.label(text=generation_summary(context.scene), icon="INFO")
        column = layout.column(align=True)
        for name in ("seed", "particles", "steps"):
            column.prop(settings, name)
        row = layout.row(align=True)
        for idname, icon in ACTIONS:
            row.operator(idname, icon=icon)
        if settings.last_bundle:
            layout.label(text=f"Last bundle: {settings.last_bundle}", icon="FILE")
        operators_jobs.draw_jobs(layout, context)

    @staticmethod
    def _draw_frames_and_resolution(layout, settings) -> None:
        column = layout.column(align=True)
        column.prop(settings, "use_scene_range")
        if not settings.use_scene_range:
            row = column.row(align=True)
            row.prop(settings, "frame_start")
            row.prop(settings, "frame_end")
        column.prop(settings, "use_scene_resolution")
        if not settings.use_scene_resolution:
            row = column.row(align=True)
            row.prop(settings, "resolution_x")
            row.prop(settings, "resolution_y")


def generation_summary(scene) -> str:
    """``Will generate: 832x464, 81 frames``: the capture's size after the backend's caps
    (the task's defaults from ``/v1/tasks`` when the backend answered), or why the scene
    cannot be captured as set."""
    settings = scene.poe
    try:
        width, height, frames = planned_size(scene, settings.task, properties.capture_frames(settings), properties.capture_resolution(settings))
    except CaptureError as error:
        return f"Cannot capture: {error}"
    scene_fps = scene.render.fps / scene.render.fps_base
    return f"Will generate: {job_view.generated_size(settings.task, width, height, frames, scene_fps, operators_jobs.SESSION.tasks)}"

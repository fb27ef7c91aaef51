"""Scene settings: every panel setting is a property saved in the .blend file (``scene.poe``).

Task and quality preset are separate choices. The issue's "preview" task is a quality
preset applied to any task: ``preset == "preview"`` (low resolution, few levels and
particles on the backend; 16 Cycles samples in capture) goes into the bundle as
``params["preset"] = "preview"`` (the task's preview values for levels and particles);
"standard" and "final" send ``"quality"`` with the panel's particles and levels and differ
in capture samples (64 and 256). The base task (insertion, sim2video, ...) is
``task``. Which model variants run (full, 1.3B/3B previews, tiny) is the backend's
choice: ``poe-backend serve --models default|preview|tiny``.
"""

from __future__ import annotations

import bpy

TASK_ITEMS = [
    ("insertion", "Object insertion", "Insert the chosen object into the rendered plate (FLUX depth x fill)"),
    ("sim2video", "Sim to video", "Video from the baked simulation's depth and the first frame (Wan2.1 experts)"),
    ("sim2video_ar", "Sim to video (autoregressive)", "Video section by section around the RGB renders (FramePack x Gaussian)"),
    ("regional_t2i", "Regional text to image", "An image from per-object prompts placed by the objects' projected boxes"),
]
PRESET_ITEMS = [
    ("preview", "Preview", "Small model variants, low resolution, few steps: quick look"),
    ("standard", "Standard", "Full models, default steps"),
    ("final", "Final", "Full models, more steps and particles"),
]


class POE_ObjectItem(bpy.types.PropertyGroup):
    """One object to insert, animate or place, with its regional prompt."""

    object: bpy.props.PointerProperty(name="Object", type=bpy.types.Object)
    prompt: bpy.props.StringProperty(name="Prompt", default="", description="Prompt for this object's region (regional text to image)")


class POE_SceneSettings(bpy.types.PropertyGroup):
    """What to capture and how to generate, stored on the scene as ``scene.poe``."""

    task: bpy.props.EnumProperty(name="Task", items=TASK_ITEMS, default="insertion")
    preset: bpy.props.EnumProperty(name="Quality", items=PRESET_ITEMS, default="standard")
    prompt: bpy.props.StringProperty(name="Prompt", default="", description="Text prompt for the whole image or video")
    objects: bpy.props.CollectionProperty(type=POE_ObjectItem)
    active_object_index: bpy.props.IntProperty(default=0)
    use_scene_range: bpy.props.BoolProperty(name="Scene frame range", default=True, description="Capture the scene's frame range (video tasks)")
    frame_start: bpy.props.IntProperty(name="Start", default=1, min=0)
    frame_end: bpy.props.IntProperty(name="End", default=49, min=0)
    use_scene_resolution: bpy.props.BoolProperty(name="Scene resolution", default=True)
    resolution_x: bpy.props.IntProperty(name="Width", default=832, min=16, max=8192, subtype="PIXEL")
    resolution_y: bpy.props.IntProperty(name="Height", default=480, min=16, max=8192, subtype="PIXEL")
    seed: bpy.props.IntProperty(name="Seed", default=0, min=0)
    particles: bpy.props.IntProperty(name="Particles", default=0, min=0, max=256, description="Number of sampler particles (0: the task's default)")
    steps: bpy.props.IntProperty(name="Steps", default=0, min=0, max=1000, description="Annealing levels, sampler steps (0: the task's default)")
    last_bundle: bpy.props.StringProperty(name="Last bundle", default="", subtype="FILE_PATH", description="bundle.json written by the last capture")


# Plain methods on a ``bpy.types.PropertyGroup`` subclass make bpy 4.2 (as a Python module)
# segfault at interpreter exit once the add-on is registered (SIGSEGV, rc 139, after the work
# succeeded; 4.5 and 5.0 exit 0). The crash is in 4.2's teardown of the registered RNA
# class, not in this code: a PropertyGroup with only properties exits 0. So the classes
# above hold properties only, and the logic that reads them lives in these functions.


def capture_frames(settings) -> list[int] | None:
    """Frames to capture: ``None`` (the capture default) with the scene range on."""
    if settings.use_scene_range:
        return None
    return list(range(settings.frame_start, settings.frame_end + 1))


def capture_resolution(settings) -> tuple[int, int] | None:
    return None if settings.use_scene_resolution else (settings.resolution_x, settings.resolution_y)


def backend_params(settings) -> dict:
    """Sampler parameters for the bundle's ``params``: the preview preset leaves levels
    and particles to the task's preview values; the others send the panel's where set
    (0, the default, leaves each to the task's default: those follow the backend's
    measurements, e.g. one particle for insertion)."""
    if settings.preset == "preview":
        return {"preset": "preview"}
    chosen = {"particles": settings.particles, "levels": settings.steps}
    return {"preset": "quality", **{name: value for name, value in chosen.items() if value > 0}}

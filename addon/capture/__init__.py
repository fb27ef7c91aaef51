"""Scene capture: render a Blender scene into a PoE scene bundle (DESIGN.md section 4).

Plain functions, no UI; usable from a script with bpy as a module::

    from addon.capture import capture_bundle
    capture_bundle(bpy.context.scene, "/tmp/shot", task="sim2video", quality="preview")

How each pass is made (all with Cycles, on whatever device the user's scene selects):

* Cycles renders on the device the user configured (``scene.cycles.device``: GPU where the
  user set one up, CPU headless); capture never changes the device.
* One Cycles render per frame with the view layer's Z and object-index passes enabled.
  The Render Result is saved twice: as an 8-bit PNG with the scene's view transform
  (``rgb/####.png``) and as an uncompressed multilayer EXR in a temporary folder, which
  :mod:`.exr` decodes into depth and the object-index pass. Cycles writes depth and
  object index from each pixel's first sample only, so they cost no extra render: this is
  the "low sample count" for depth and masks.
* Tasks that need no RGB with the objects (``insertion``) render that pass with 1 sample
  and no denoising; the plate (scene without the objects, ``hide_render``) is then rendered
  once, on the first frame, with the preset's samples. ``regional_t2i`` renders nothing: it
  only needs camera data and boxes.
* Depth: Cycles' Z pass is camera-space Z (not ray length) in scene units; background
  (1e10 in Cycles) becomes ``+inf``.
* Masks: each named object gets a temporary ``pass_index`` 1..N; every other object gets 0
  for the duration, so the user's own indices never collide; all are restored.
* Boxes: evaluated geometry projected with the camera matrix (:mod:`.geometry`).
* Physics: an unbaked rigid-body cache is filled by frame stepping (:mod:`.physics`);
  each object's ``matrix_world`` per frame goes to its bundle entry (``objects[i].matrix_world``).
* Non-video tasks (``insertion``, ``regional_t2i``) capture one frame: the first of
  ``frames``, by default the scene's current frame. Video tasks default to the scene range,
  narrowed to the rigid-body cache's range when the scene has a rigid-body world.
* Motion blur, compositing and the sequencer are switched off during capture so the
  passes line up with the RGB; every changed setting is restored (:class:`.state.SceneState`),
  also when capture fails half way.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import bpy
import numpy as np

from .. import bundle_schema
from . import exr, geometry, physics
from .png import write_png
from .state import SceneState

#: Cycles samples for the RGB and plate renders per quality preset.
PRESET_SAMPLES = {"preview": 16, "standard": 64, "final": 256}
BACKGROUND_DEPTH = 1e9  # Cycles writes 1e10 where a ray hits nothing
ProgressCallback = Callable[[int, int], None]


class CaptureError(ValueError):
    """The scene cannot be captured as asked; the message names what to fix."""


def capture_bundle(
    scene,
    out_dir: str | Path,
    *,
    task: str,
    frames: Sequence[int] | None = None,
    objects: Sequence[Any] | None = None,
    prompt: str = "",
    params: dict[str, Any] | None = None,
    quality: str = "standard",
    samples: int | None = None,
    progress: ProgressCallback | None = None,
    object_prompts: dict[str, str] | None = None,
    resolution: tuple[int, int] | None = None,
    seed: int = 0,
    view_layer=None,
    timings: dict[str, float] | None = None,
) -> Path:
    """Render ``scene`` into a bundle directory ``out_dir``; returns the bundle.json path.

    ``task``: one of :data:`bundle_schema.TASK_PASSES` (the one table of which passes each task gets). ``frames``: scene frame numbers (see module doc
    for defaults). ``objects``: objects or object names (masks, boxes, motion); by default
    the task picks them (active rigid bodies for video tasks, objects with a ``poe_prompt``
    custom property for ``regional_t2i``), dropping those never in view, whereas an object
    given here that is never in view is an error. ``object_prompts`` maps names to regional prompts
    (default: each object's ``poe_prompt`` custom property). ``params`` goes into the bundle
    as is, plus what capture adds (``preset``, ``samples``, ``object_motion``);
    ``params["preset"]`` picks the RGB samples from :data:`PRESET_SAMPLES` unless
    ``params["samples"]`` is given. ``resolution``: (width, height) in pixels, default the
    scene's. ``progress(done, total)`` is called after every rendered image; an exception
    from it aborts the capture (the scene is still restored). ``timings``, when given, is
    filled with seconds spent per step (``render``, ``rgb``, ``depth_masks``, ``plate``,
    ``geometry``).
    """
    params = dict(params or {})
    timings = {} if timings is None else timings
    plan = _plan(scene, out_dir, task, frames, objects, resolution, view_layer, quality, samples)
    prompts = {obj.name: (object_prompts or {}).get(obj.name, str(obj.get("poe_prompt", ""))) for obj in plan["objects"]}
    with SceneState(scene) as state:
        _configure(state, scene, plan)
        started = time.perf_counter()
        physics.simulate_rigid_bodies(scene, max(plan["frames"]))
        cameras, boxes, motion = _read_geometry(scene, plan)
        timings["geometry"] = time.perf_counter() - started
        if plan["objects_given"]:
            _check_visible(scene, plan["objects"], boxes)
        else:  # objects the task picked itself: keep those in view on some frame
            plan["objects"] = [obj for obj in plan["objects"] if any(box is not None for box in boxes[obj.name])]
            _configure_pass_indices(state, scene, plan["objects"])
        passes = _render_passes(state, scene, plan, progress, timings)
    motion = {obj.name: motion[obj.name] for obj in plan["objects"]}
    bundle = bundle_schema.Bundle(
        root=plan["out_dir"], task=task, prompt=prompt, seed=int(seed),
        width=plan["width"], height=plan["height"], fps=scene.render.fps / scene.render.fps_base,
        frames=plan["frames"], camera=bundle_schema.Camera(**geometry.camera_record(scene.camera), matrix_world=cameras),
        passes=passes,
        objects=[
            bundle_schema.SceneObject(obj.name, index + 1, prompts[obj.name], boxes[obj.name], motion[obj.name])
            for index, obj in enumerate(plan["objects"])
        ],
        params=params,
        capture={"quality": plan["quality"], "samples": plan["samples"], "blender_version": bpy.app.version_string},
    )
    try:
        return bundle_schema.write_bundle(bundle)
    except bundle_schema.BundleError as error:
        raise CaptureError(f"the bundle would not be valid: {error}") from None


def _plan(scene, out_dir, task, frames, objects, resolution, view_layer, quality, samples) -> dict[str, Any]:
    """Check the request against the scene; everything capture needs, decided up front."""
    if task not in bundle_schema.TASK_PASSES:
        raise CaptureError(f"unknown task {task!r}; choose one of {', '.join(bundle_schema.TASK_PASSES)}")
    if scene.camera is None:
        raise CaptureError(f"scene '{scene.name}' has no active camera")
    if scene.camera.type != "CAMERA":
        raise CaptureError(f"the scene camera '{scene.camera.name}' is not a camera object")
    if scene.camera.data.type == "PANO":
        raise CaptureError("panoramic cameras are not supported (depth must be camera Z)")
    frames = _frames(scene, task, frames)
    chosen = _objects(scene, task, objects)
    if task == "insertion" and not chosen:
        raise CaptureError("insertion needs the object to insert: give at least one object")
    width, height = resolution or _scene_resolution(scene)
    if width <= 0 or height <= 0:
        raise CaptureError(f"resolution must be positive, got {width}x{height}")
    if quality not in PRESET_SAMPLES:
        raise CaptureError(f"unknown quality preset {quality!r}; choose one of {', '.join(PRESET_SAMPLES)}")
    layer = view_layer or _default_view_layer(scene)
    return {
        "task": task, "frames": frames, "objects": chosen, "objects_given": objects is not None, "width": int(width), "height": int(height),
        "quality": quality, "samples": int(samples or PRESET_SAMPLES[quality]), "view_layer": layer,
        "out_dir": _writable_dir(out_dir), "use_denoising": bool(scene.cycles.use_denoising),
    }


def _frames(scene, task: str, frames) -> list[int]:
    if frames is None:
        if task in bundle_schema.VIDEO_TASKS:
            start, end = scene.frame_start, scene.frame_end
            cache_range = physics.rigid_body_frame_range(scene)
            if cache_range is not None:  # the simulated part of the scene range
                start, end = max(start, cache_range[0]), min(end, cache_range[1])
            frames = range(start, end + 1)
        else:
            frames = [scene.frame_current]
    frames = [int(frame) for frame in frames]
    if not frames:
        raise CaptureError("the frame range is empty")
    if len(set(frames)) != len(frames):
        raise CaptureError("frames must not repeat")
    return frames if task in bundle_schema.VIDEO_TASKS else frames[:1]


def _objects(scene, task: str, objects) -> list:
    if objects is None:
        if task in bundle_schema.VIDEO_TASKS:
            return [obj for obj in scene.objects if obj.rigid_body is not None and obj.rigid_body.type == "ACTIVE"]
        if task == "regional_t2i":
            return [obj for obj in scene.objects if "poe_prompt" in obj]
        return []
    chosen = []
    for item in objects:
        name = item if isinstance(item, str) else item.name
        obj = scene.objects.get(name)
        if obj is None:
            raise CaptureError(f"object '{name}' is not in scene '{scene.name}'")
        if "/" in name or "\\" in name:
            raise CaptureError(f"object '{name}': names with '/' or '\\' cannot name mask folders; rename it")
        if obj not in chosen:
            chosen.append(obj)
    return chosen


def planned_size(scene, task: str, frames=None, resolution: tuple[int, int] | None = None) -> tuple[int, int, list[int]]:
    """``(width, height, frames)`` a capture with these arguments would write (the same
    frame and resolution rules as :func:`capture_bundle`; ``frames`` the scene frame
    numbers); for the panel."""
    width, height = resolution or _scene_resolution(scene)
    return width, height, list(_frames(scene, task, frames))


def _scene_resolution(scene) -> tuple[int, int]:
    scale = scene.render.resolution_percentage / 100.0
    return round(scene.render.resolution_x * scale), round(scene.render.resolution_y * scale)


def _default_view_layer(scene):
    context_layer = getattr(bpy.context, "view_layer", None)
    if context_layer is not None and scene.view_layers.get(context_layer.name) == context_layer:
        return context_layer
    return scene.view_layers[0]


def _writable_dir(out_dir) -> Path:
    path = Path(out_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CaptureError(f"output folder {path} cannot be created: {error.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise CaptureError(f"output folder {path} is not writable")
    return path


def _configure(state: SceneState, scene, plan) -> None:
    """Render settings for capture; every change goes through ``state`` so it is undone."""
    render = scene.render
    state.set(render, "engine", "CYCLES")
    state.set(render, "resolution_x", plan["width"])
    state.set(render, "resolution_y", plan["height"])
    state.set(render, "resolution_percentage", 100)
    for name in ("use_motion_blur", "use_compositing", "use_sequencer"):
        state.set(render, name, False)
    state.set(scene.cycles, "samples", plan["samples"])
    state.set(plan["view_layer"], "use_pass_z", True)
    state.set(plan["view_layer"], "use_pass_object_index", True)
    _configure_pass_indices(state, scene, plan["objects"])


def _configure_pass_indices(state: SceneState, scene, objects) -> None:
    """Objects of interest get 1..N in order, every other object 0 (restored on exit)."""
    targets = {obj.name: index + 1 for index, obj in enumerate(objects)}
    for obj in scene.objects:
        state.set(obj, "pass_index", targets.get(obj.name, 0))


def _read_geometry(scene, plan) -> tuple[list, dict[str, list], dict[str, list]]:
    """Per frame: camera matrix, each object's box and world matrix."""
    cameras, boxes, motion = [], {obj.name: [] for obj in plan["objects"]}, {obj.name: [] for obj in plan["objects"]}
    width, height = plan["width"], plan["height"]
    for frame in plan["frames"]:
        scene.frame_set(frame)
        depsgraph = plan["view_layer"].depsgraph
        cameras.append(geometry.matrix_rows(scene.camera.matrix_world))
        for obj in plan["objects"]:
            if obj.hide_render:
                boxes[obj.name].append(None)
            else:
                points = geometry.world_to_pixels(scene, depsgraph, geometry.object_points_world(obj, depsgraph), width, height)
                boxes[obj.name].append(geometry.bbox_pixels(points, width, height))
            motion[obj.name].append(geometry.matrix_rows(obj.matrix_world))
    return cameras, boxes, motion


def _check_visible(scene, objects, boxes: dict[str, list]) -> None:
    for obj in objects:
        if obj.hide_render:
            raise CaptureError(f"object '{obj.name}' is hidden from rendering (hide_render)")
        if all(box is None for box in boxes[obj.name]):
            raise CaptureError(f"object '{obj.name}' is not visible from camera '{scene.camera.name}' on any captured frame")


def _render_passes(state: SceneState, scene, plan, progress, timings) -> dict[str, str]:
    """Render what the task needs; returns the bundle's ``passes`` patterns."""
    needed = bundle_schema.TASK_PASSES[plan["task"]]
    with_rgb, with_plate, with_data = "rgb" in needed, "plate" in needed, "depth" in needed
    passes = _pass_patterns(plan, with_rgb, with_data)
    per_frame = with_rgb or with_data
    steps, total = itertools.count(1), len(plan["frames"]) * per_frame + with_plate

    def report() -> None:
        step = next(steps)
        if progress is not None:
            progress(step, total)

    for key in ("render", "rgb", "depth_masks", "plate"):
        timings.setdefault(key, 0.0)
    if per_frame:
        _render_frames(state, scene, plan, passes, timings, report)
    if with_plate:
        _timed(timings, "plate", _render_plate, state, scene, plan)
        passes["plate"] = "plate.png"
        report()
    return passes


def _pass_patterns(plan, with_rgb: bool, with_data: bool) -> dict[str, str]:
    """Per-frame pass patterns, their folders created."""
    passes: dict[str, str] = {}
    if with_rgb:
        passes["rgb"] = "rgb/####.png"
    if with_data:
        passes["depth"] = "depth/####.exr"
        passes.update({f"mask.{obj.name}": f"mask/{obj.name}/####.png" for obj in plan["objects"]})
    for pattern in passes.values():
        (plan["out_dir"] / pattern).parent.mkdir(parents=True, exist_ok=True)
    return passes


def _render_frames(state: SceneState, scene, plan, passes: dict[str, str], timings, report) -> None:
    """One render per frame; RGB and/or depth + masks from its Render Result."""
    if "rgb" not in passes:  # data only: each pixel's first sample carries depth and index
        state.set(scene.cycles, "samples", 1)
        state.set(scene.cycles, "use_denoising", False)
    with tempfile.TemporaryDirectory(prefix="poe_capture_") as scratch:
        for frame in plan["frames"]:
            scene.frame_set(frame)
            _timed(timings, "render", bpy.ops.render.render, layer=plan["view_layer"].name, scene=scene.name)
            if "rgb" in passes:
                _timed(timings, "rgb", _save_png, state, scene, _frame_path(plan["out_dir"], passes["rgb"], frame))
            if "depth" in passes:
                _timed(timings, "depth_masks", _save_data, state, scene, plan, Path(scratch), passes, frame)
            report()


def _render_plate(state: SceneState, scene, plan) -> None:
    """The first frame without the objects, at the preset's samples and the user's denoising."""
    scene.frame_set(plan["frames"][0])
    state.set(scene.cycles, "samples", plan["samples"])
    state.set(scene.cycles, "use_denoising", plan["use_denoising"])
    for obj in plan["objects"]:
        state.set(obj, "hide_render", True)
    bpy.ops.render.render(layer=plan["view_layer"].name, scene=scene.name)
    _save_png(state, scene, plan["out_dir"] / "plate.png")


def _timed(timings: dict[str, float], key: str, function, *args, **kwargs) -> None:
    started = time.perf_counter()
    function(*args, **kwargs)
    timings[key] += time.perf_counter() - started


def _frame_path(out_dir: Path, pattern: str, frame: int) -> Path:
    return out_dir / pattern.replace(bundle_schema.FRAME_TOKEN, f"{frame:04d}")


def _set_image_format(state: SceneState, scene, media_type: str, file_format: str, color_mode: str, color_depth: str) -> None:
    settings = scene.render.image_settings
    state.remember(settings, "media_type", "file_format", "color_mode", "color_depth", "exr_codec")
    if hasattr(settings, "media_type"):  # Blender >= 5.0: the media type gates the formats
        state.set(settings, "media_type", media_type)
    state.set(settings, "file_format", file_format)
    state.set(settings, "color_mode", color_mode)
    state.set(settings, "color_depth", color_depth)


def _save_png(state: SceneState, scene, path: Path) -> None:
    """The Render Result as an 8-bit RGB PNG through the scene's view transform."""
    _set_image_format(state, scene, "IMAGE", "PNG", "RGB", "8")
    bpy.data.images["Render Result"].save_render(str(path), scene=scene)


def _save_data(state: SceneState, scene, plan, scratch: Path, passes: dict[str, str], frame: int) -> None:
    """Depth and one mask per object from the Render Result's Z and object-index passes."""
    _set_image_format(state, scene, "MULTI_LAYER_IMAGE", "OPEN_EXR_MULTILAYER", "RGBA", "32")
    state.set(scene.render.image_settings, "exr_codec", "NONE")
    raw = scratch / f"{frame:04d}.exr"
    bpy.data.images["Render Result"].save_render(str(raw), scene=scene)
    depth, index = read_data_passes(raw, plan["view_layer"].name)
    raw.unlink()
    exr.write_single_channel(_frame_path(plan["out_dir"], passes["depth"], frame), depth, "Z")
    for number, obj in enumerate(plan["objects"], start=1):
        mask = np.where(np.rint(index) == number, 255, 0).astype(np.uint8)
        write_png(_frame_path(plan["out_dir"], passes[f"mask.{obj.name}"], frame), mask)


def read_data_passes(path: Path, layer_name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(depth, object_index)`` float32 ``(height, width)`` arrays (row 0 = top) from a
    multilayer EXR written by Blender 4.2 (``IndexOB``) or 5.0 (``Object Index``); depth is
    ``+inf`` where nothing was hit."""
    channels = exr.read_channels(path)
    depth = _channel(channels, layer_name, ("Depth.Z",))
    index = _channel(channels, layer_name, ("Object Index.X", "IndexOB.X"))
    depth = np.where(depth >= BACKGROUND_DEPTH, np.inf, depth).astype(np.float32)
    return depth, index


def _channel(channels: dict[str, np.ndarray], layer_name: str, suffixes: tuple[str, ...]) -> np.ndarray:
    for suffix in suffixes:
        for name in (f"{layer_name}.{suffix}", suffix):
            if name in channels:
                return channels[name]
    raise CaptureError(f"render has no {suffixes[0]} pass for view layer '{layer_name}' (channels: {', '.join(sorted(channels))})")

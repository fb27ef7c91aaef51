"""Bringing a finished job into the scene (bpy; main thread only).

* image (and ``points`` results whose primary file is an image): an image datablock
  (packed into the .blend) on a plane parented to the scene camera, just past its near
  clip and exactly filling its view (from ``Camera.view_frame``, so sensor fit, aspect and
  shift are honoured), with an emission material; or, with ``as_background=True``, the
  camera's background image instead of a plane.
* video: a movie strip in the scene's sequencer starting at the captured first frame;
  a video given as numbered images becomes an image-sequence strip. The video plays over
  the seconds of the simulation it was made from, not stretched, not cut: the backend
  generates at the model's rate (Wan 16 fps, FramePack 30 fps), and a strip added through
  the API (``new_movie``) shows one media frame per scene frame on every Blender version
  (4.2, 4.5, 5.0: a 33-frame 16 fps clip lasts 33 frames of a 24 fps scene, 1.4 s instead
  of 2 s). ``new_movie`` has no playback-rate option, the strip's automatic playback rate
  (the Add Movie operator's "Adjust Playback Rate") is not exposed to Python, retiming
  keys cannot be created through the API, and the operator needs a Sequencer area and on
  4.x also sets the scene's rate to the movie's. So a media rate that differs from the
  scene's is played through a Speed Control effect strip (``MULTIPLY``, factor media rate /
  scene rate) on the channel above the (muted) source: media frame ``k`` lands on scene
  frame ``first + k · scene_fps / media_fps``, and both strips end on the scene frame of
  the last media frame (33 frames at 16 fps from frame 1 of a 24 fps scene: frames 1..49,
  the 2 s of a simulation baked on frames 1..49).

Every datablock (image, object, mesh, material, strip) carries the ``poe_*`` properties
of :func:`jobs.provenance`. Loading a job again replaces what it created before (found by
``poe_job_id``), so nothing is duplicated.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import bpy

from .jobs import JobResult, provenance

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".exr", ".tif", ".tiff", ".webp", ".bmp"})
PLANE_DISTANCE_FACTOR = 1.5  # the plane sits at 1.5 x the camera's clip_start


def load_result(scene: bpy.types.Scene, result: JobResult, *, as_background: bool = False) -> list[Any]:
    """Create (or replace) the datablocks for ``result``; returns them."""
    props = provenance(result)
    is_image = result.primary.suffix.lower() in IMAGE_SUFFIXES
    if result.kind == "video":
        frames = [path for name, path in sorted(result.outputs.items()) if path.suffix.lower() in IMAGE_SUFFIXES and name != "result.json"]
        return load_video(scene, result.primary, props, _first_frame(result), image_sequence=frames if is_image else None,
                          fps=_size(result).get("fps"), scene_fps=_scene_fps(scene, result))
    if not is_image:
        raise ValueError(f"a {result.kind} result whose main file is {result.primary.name} has nothing to show in Blender")
    image = load_image(result.primary, props)
    if as_background:
        return [image, set_camera_background(scene, image, props)]
    return [image, *image_plane(scene, image, props)]


def _first_frame(result: JobResult) -> int:
    frames = (result.job.get("bundle") or {}).get("frames") or result.manifest.get("frames") or [1]
    return int(frames[0])


def _size(result: JobResult) -> dict[str, Any]:
    return result.manifest.get("size") or {}


def _scene_fps(scene: bpy.types.Scene, result: JobResult) -> float:
    """The rate the simulation was captured at (result.json's ``size.scene_fps``, else the
    job's bundle ``fps``), so the video stays on the simulation's frames even if the
    scene's rate changed since; the scene's own rate for results that say neither."""
    captured = _size(result).get("scene_fps") or (result.job.get("bundle") or {}).get("fps")
    return float(captured) if captured else scene.render.fps / scene.render.fps_base


def tag(datablock: Any, props: dict[str, Any]) -> None:
    for key, value in props.items():
        datablock[key] = value


def find_tagged(collection: Any, job_id: str) -> list[Any]:
    return [item for item in collection if item.get("poe_job_id") == job_id]


def load_image(path: Path, props: dict[str, Any]) -> bpy.types.Image:
    """A new packed image datablock named ``PoE <task> <job>``, replacing the job's old one.
    ValueError when Blender cannot decode the file (it would load as an empty 0×0 image and
    report success); the job's old image is then kept."""
    image = bpy.data.images.load(str(path), check_existing=False)
    if tuple(image.size) == (0, 0):
        bpy.data.images.remove(image)
        raise ValueError(f"the result {path.name} is not an image Blender can read")
    for old in find_tagged(bpy.data.images, props["poe_job_id"]):
        bpy.data.images.remove(old)
    image.name = f"PoE {props['poe_task']} {props['poe_job_id']}"
    image.pack()
    tag(image, props)
    return image


def _camera(scene: bpy.types.Scene) -> bpy.types.Object:
    if scene.camera is None:
        raise ValueError("the scene has no active camera to put the result in front of")
    return scene.camera


def _plane_mesh(scene: bpy.types.Scene, camera: bpy.types.Object, name: str) -> bpy.types.Mesh:
    """A quad in camera space at 1.5 x clip_start that covers the camera's view exactly."""
    distance = max(camera.data.clip_start * PLANE_DISTANCE_FACTOR, 1e-3)
    corners = camera.data.view_frame(scene=scene)
    if camera.data.type == "ORTHO":
        points = [(c.x, c.y, -distance) for c in corners]
    else:
        points = [(c.x * distance / -c.z, c.y * distance / -c.z, -distance) for c in corners]
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(points, [], [(0, 1, 2, 3)])
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    uv_layer = mesh.uv_layers.new(name="UVMap")
    for loop in mesh.loops:
        x, y, _ = points[loop.vertex_index]
        uv_layer.data[loop.index].uv = ((x - min(xs)) / (max(xs) - min(xs)), (y - min(ys)) / (max(ys) - min(ys)))
    if mesh.polygons[0].normal.z < 0:  # face the camera
        mesh.flip_normals()
    mesh.update()
    return mesh


def _material(image: bpy.types.Image, props: dict[str, Any]) -> bpy.types.Material:
    """An emission material showing ``image`` unlit (the job's old one is reused)."""
    existing = find_tagged(bpy.data.materials, props["poe_job_id"])
    material = existing[0] if existing else bpy.data.materials.new(f"PoE {props['poe_job_id']}")
    if material.node_tree is None:  # Blender < 5.0 creates materials without nodes
        material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    nodes.clear()
    texture = nodes.new("ShaderNodeTexImage")
    texture.image = image
    emission = nodes.new("ShaderNodeEmission")
    output = nodes.new("ShaderNodeOutputMaterial")
    links.new(texture.outputs["Color"], emission.inputs["Color"])
    links.new(emission.outputs["Emission"], output.inputs["Surface"])
    tag(material, props)
    return material


def image_plane(scene: bpy.types.Scene, image: bpy.types.Image, props: dict[str, Any]) -> list[Any]:
    """The plane object (parented to the camera) and its mesh and material."""
    camera = _camera(scene)
    name = f"PoE {props['poe_task']} {props['poe_job_id']}"
    mesh = _plane_mesh(scene, camera, name)
    mesh.materials.append(_material(image, props))
    tag(mesh, props)
    existing = find_tagged(bpy.data.objects, props["poe_job_id"])
    if existing:
        plane = existing[0]
        old_mesh, plane.data = plane.data, mesh
        if old_mesh.users == 0:
            bpy.data.meshes.remove(old_mesh)
            mesh.name = name
    else:
        plane = bpy.data.objects.new(name, mesh)
        scene.collection.objects.link(plane)
    plane.parent = camera
    plane.matrix_parent_inverse.identity()
    plane.matrix_basis.identity()
    tag(plane, props)
    return [plane, mesh, plane.active_material]


def set_camera_background(scene: bpy.types.Scene, image: bpy.types.Image, props: dict[str, Any]) -> Any:
    """Show ``image`` as the camera's background, replacing this job's earlier entry."""
    camera_data = _camera(scene).data
    for entry in list(camera_data.background_images):
        if entry.image is None or entry.image.get("poe_job_id") == props["poe_job_id"]:
            camera_data.background_images.remove(entry)
    entry = camera_data.background_images.new()
    entry.image = image
    camera_data.show_background_images = True
    return entry


def _strips(scene: bpy.types.Scene) -> tuple[Any, Any]:
    """The top-level strip collection and the all-strips view (5.0 ``strips``, 4.2 ``sequences``)."""
    editor = scene.sequence_editor or scene.sequence_editor_create()
    if hasattr(editor, "strips"):
        return editor.strips, editor.strips_all
    return editor.sequences, editor.sequences_all


def load_video(scene: bpy.types.Scene, path: Path, props: dict[str, Any], frame_start: int, *, image_sequence: list[Path] | None = None,
               fps: float | None = None, scene_fps: float | None = None) -> list[Any]:
    """A movie strip (or image-sequence strip) at ``frame_start`` on the job's channel,
    played at the scene's rate (:func:`play_at_scene_rate`): ``fps`` is the media's rate
    (a movie's own rate wins; needed for an image sequence), ``scene_fps`` the rate of the
    scene frames the video belongs to (default: the scene's). Returns the strips, the one
    that plays first: ``[source]``, or ``[speed control, muted source]``."""
    strips, all_strips = _strips(scene)
    old = find_tagged(strips, props["poe_job_id"])  # top level only: remove() cannot reach into meta strips
    channel = min((strip.channel for strip in old), default=None)
    for strip in sorted(old, key=lambda strip: strip.type != "SPEED"):  # an effect before its input (removing the input removes it)
        strips.remove(strip)
    if channel is None:
        channel = 1 + max((strip.channel for strip in all_strips), default=0)
    name = f"PoE {props['poe_task']} {props['poe_job_id']}"
    if image_sequence:
        strip = strips.new_image(name=name, filepath=str(image_sequence[0]), channel=channel, frame_start=frame_start)
        for frame in image_sequence[1:]:
            strip.elements.append(frame.name)
    else:
        strip = strips.new_movie(name=name, filepath=str(path), channel=channel, frame_start=frame_start)
    tag(strip, props)
    media_fps = getattr(strip, "fps", 0.0) or fps or 0.0
    speed = play_at_scene_rate(strips, strip, media_fps, scene_fps or scene.render.fps / scene.render.fps_base)
    if speed is None:
        return [strip]
    tag(speed, props)
    return [speed, strip]


def scene_duration(media_frames: int, media_fps: float, scene_fps: float) -> int:
    """Scene frames from the first media frame's to the last one's, both included: the
    media's ``(media_frames - 1) / media_fps`` seconds at ``scene_fps`` (33 frames at 16 fps
    in a 24 fps scene: 2 s, 49 frames)."""
    return math.floor((media_frames - 1) * scene_fps / media_fps + 1e-6) + 1


def play_at_scene_rate(strips: Any, strip: Any, media_fps: float, scene_fps: float) -> Any | None:
    """Make ``strip`` (media at ``media_fps`` frames per second) play in real time in a
    ``scene_fps`` scene: a Speed Control strip on the channel above, ``MULTIPLY`` by
    ``media_fps / scene_fps``, shows media frame ``k`` on scene frame ``start + k ·
    scene_fps / media_fps`` (between those, 4.5 and 5.0 show the nearest media frame, 4.2
    the one before); the source is muted and set to :func:`scene_duration` (holding its
    last frame, or cut when the media is faster), which the effect's length follows.
    Returns the Speed Control strip, or None when the rates agree (or ``media_fps`` is
    unknown, 0) and the strip plays as it is."""
    if media_fps <= 0 or math.isclose(media_fps, scene_fps, rel_tol=1e-6):
        return None
    duration = scene_duration(strip.frame_duration, media_fps, scene_fps)
    strip.frame_final_duration = duration
    parameters = strips.bl_rna.functions["new_effect"].parameters
    source = {"input1" if "input1" in parameters else "seq1": strip}  # 4.5+ / 4.2
    length = {"length": duration} if "length" in parameters else {"frame_end": int(strip.frame_start) + duration}  # 5.0 / 4.x
    speed = strips.new_effect(name=f"{strip.name} {media_fps:g} fps", type="SPEED", channel=strip.channel + 1, frame_start=int(strip.frame_start), **source, **length)
    speed.speed_control = "MULTIPLY"
    speed.speed_factor = media_fps / scene_fps
    strip.mute = True
    return speed

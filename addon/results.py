"""Bringing a finished job into the scene (bpy; main thread only).

* image (and ``points`` results whose primary file is an image): an image datablock
  (packed into the .blend) on a plane parented to the scene camera, just past its near
  clip and exactly filling its view (from ``Camera.view_frame``, so sensor fit, aspect and
  shift are honoured), with an emission material; or, with ``as_background=True``, the
  camera's background image instead of a plane.
* video: a movie strip in the scene's sequencer starting at the captured first frame;
  a video given as numbered images becomes an image-sequence strip.

Every datablock (image, object, mesh, material, strip) carries the ``poe_*`` properties
of :func:`jobs.provenance`. Loading a job again replaces what it created before (found by
``poe_job_id``), so nothing is duplicated.
"""

from __future__ import annotations

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
        return [load_video(scene, result.primary, props, _first_frame(result), image_sequence=frames if is_image else None)]
    if not is_image:
        raise ValueError(f"a {result.kind} result whose main file is {result.primary.name} has nothing to show in Blender")
    image = load_image(result.primary, props)
    if as_background:
        return [image, set_camera_background(scene, image, props)]
    return [image, *image_plane(scene, image, props)]


def _first_frame(result: JobResult) -> int:
    frames = (result.job.get("bundle") or {}).get("frames") or result.manifest.get("frames") or [1]
    return int(frames[0])


def tag(datablock: Any, props: dict[str, Any]) -> None:
    for key, value in props.items():
        datablock[key] = value


def find_tagged(collection: Any, job_id: str) -> list[Any]:
    return [item for item in collection if item.get("poe_job_id") == job_id]


def load_image(path: Path, props: dict[str, Any]) -> bpy.types.Image:
    """A new packed image datablock named ``PoE <task> <job>``, replacing the job's old one."""
    for old in find_tagged(bpy.data.images, props["poe_job_id"]):
        bpy.data.images.remove(old)
    image = bpy.data.images.load(str(path), check_existing=False)
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


def load_video(scene: bpy.types.Scene, path: Path, props: dict[str, Any], frame_start: int, *, image_sequence: list[Path] | None = None) -> Any:
    """A movie strip (or image-sequence strip) at ``frame_start`` on the job's channel."""
    strips, all_strips = _strips(scene)
    channel = None
    for old in find_tagged(strips, props["poe_job_id"]):  # top level only: remove() cannot reach into meta strips
        channel = old.channel
        strips.remove(old)
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
    return strip

"""Helpers shared by the example scene scripts: empty scene, camera, light, materials."""

from __future__ import annotations

import sys
from pathlib import Path

import bpy
from mathutils import Vector


def new_scene(name: str, *, width: int, height: int, frames: tuple[int, int] = (1, 1)):
    """Factory-empty file with one Cycles scene of the given size and frame range."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.name = name
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 32
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.frame_start, scene.frame_end = frames
    scene.frame_set(frames[0])
    world = bpy.data.worlds.new("World")
    world.color = (0.05, 0.05, 0.06)
    scene.world = world
    return scene


def add_camera(scene, location, target, *, lens: float = 35.0):
    """A perspective camera at ``location`` looking at ``target``, made the scene camera."""
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    camera.data.lens = lens
    camera.location = location
    direction = Vector(target) - Vector(location)
    camera.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()
    scene.collection.objects.link(camera)
    scene.camera = camera
    return camera


def add_sun(scene, *, strength: float = 3.0, rotation=(0.6, 0.2, 0.8)):
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sun.data.energy = strength
    sun.rotation_euler = rotation
    scene.collection.objects.link(sun)
    return sun


def material(name: str, color, *, roughness: float = 0.5):
    """A Principled BSDF material with a base colour (RGB in 0..1)."""
    mat = bpy.data.materials.new(name)
    mat.diffuse_color = (*color, 1.0)
    if mat.node_tree is None:  # Blender 4.2; 5.0 materials always have nodes
        mat.use_nodes = True
    bsdf = mat.node_tree.nodes.get("Principled BSDF")
    if bsdf is not None:
        bsdf.inputs["Base Color"].default_value = (*color, 1.0)
        bsdf.inputs["Roughness"].default_value = roughness
    return mat


def primitive(kind: str, name: str, *, color=None, prompt: str | None = None, **kwargs):
    """``bpy.ops.mesh.primitive_<kind>_add(**kwargs)``, renamed, coloured, optionally labelled
    with a ``poe_prompt`` custom property (the add-on's per-object prompt default)."""
    getattr(bpy.ops.mesh, f"primitive_{kind}_add")(**kwargs)
    obj = bpy.context.object
    obj.name = obj.data.name = name
    if color is not None:
        obj.data.materials.append(material(name, color))
    if prompt is not None:
        obj["poe_prompt"] = prompt
    return obj


def save(path: str | Path) -> Path:
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    return path


def main(build) -> None:
    """Command line: ``python <script> OUT.blend`` (arguments after ``--`` under Blender)."""
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
    if len(argv) != 1:
        raise SystemExit(f"usage: python {Path(sys.argv[0]).name} OUT.blend")
    print(build(argv[0]))

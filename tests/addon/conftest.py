"""Fixtures for tests that need Blender: bpy as a module (CI) or inside a Blender binary
(pytest-blender). bpy keeps one global state per process, so every scene fixture starts
from ``read_factory_settings(use_empty=True)``."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # inside a Blender binary the repository is not on sys.path
    sys.path.insert(0, str(ROOT))


#: True when the tests run inside a Blender binary (pytest-blender), False with bpy as a module.
IN_BLENDER_BINARY = bool(bpy.app.binary_path)


def python_with_bpy(script: str, *arguments: str) -> list[str]:
    """A command line that runs ``script`` (a .py path) with bpy importable and
    ``arguments`` after ``--`` in ``sys.argv``: the same Python with bpy as a module, or
    ``blender -b --python`` inside a Blender binary."""
    if IN_BLENDER_BINARY:
        return [bpy.app.binary_path, "-b", "--factory-startup", "--python-exit-code", "1", "--python", script, "--", *arguments]
    return [sys.executable, script, "--", *arguments]


def tiny_cycles(scene, width: int = 64, height: int = 48, samples: int = 1) -> None:
    """Cheap CPU Cycles settings for tests (2 shared cores)."""
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100


def add_camera(scene, location=(0.0, 0.0, 0.0), rotation=(0.0, 0.0, 0.0), lens: float = 35.0):
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    camera.location, camera.rotation_euler = location, rotation
    camera.data.lens = lens
    scene.collection.objects.link(camera)
    scene.camera = camera
    return camera


def add_mesh(kind: str, name: str, **kwargs):
    getattr(bpy.ops.mesh, f"primitive_{kind}_add")(**kwargs)
    obj = bpy.context.object
    obj.name = name
    return obj


@pytest.fixture
def empty_scene():
    """A factory-empty scene with tiny Cycles settings."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    tiny_cycles(scene)
    yield scene
    bpy.ops.wm.read_factory_settings(use_empty=True)


@pytest.fixture
def plane_and_cube(empty_scene):
    """Camera at the origin looking down -Z; a plane facing it 6 units away and a rotated
    cube 4 units away; both inside the view, on a black world."""
    scene = empty_scene
    add_camera(scene, lens=35.0)
    add_mesh("plane", "Plane", size=3.0, location=(1.2, 0.2, -6.0))
    cube = add_mesh("cube", "Cube", size=1.0, location=(-0.9, -0.1, -4.0))
    cube.rotation_euler = (math.radians(25), math.radians(35), math.radians(10))
    light = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    scene.collection.objects.link(light)
    return scene

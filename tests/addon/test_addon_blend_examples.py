"""The example scene scripts build .blend files from scratch that capture accepts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import bpy

from addon.capture import capture_bundle
from blend_examples import falling_objects, insertion_table, regional_layout
from conftest import python_with_bpy

pytestmark = pytest.mark.blender

ROOT = Path(__file__).resolve().parents[2]


def test_insertion_table_captures_plate_depth_and_mask(tmp_path):
    insertion_table.build(tmp_path / "table.blend")
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "table.blend"))
    scene = bpy.context.scene
    scene.cycles.use_denoising = False
    path = capture_bundle(scene, tmp_path / "bundle", task="insertion", objects=["Can"], resolution=(64, 40), samples=1)
    bundle = bpy_free_read(path)
    assert set(bundle.passes) == {"plate", "rgb", "depth", "mask.Can"}  # rgb: the render with the object (RF-Solver source)
    assert bundle.objects[0].prompt == "a red soda can"


def test_falling_objects_has_an_unbaked_rigid_body_world(tmp_path):
    falling_objects.build(tmp_path / "falling.blend")
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "falling.blend"))
    scene = bpy.context.scene
    assert scene.rigidbody_world is not None and not scene.rigidbody_world.point_cache.is_baked
    active = [obj.name for obj in scene.objects if obj.rigid_body and obj.rigid_body.type == "ACTIVE"]
    assert len(active) == 5


def test_regional_layout_labels_become_regions(tmp_path):
    regional_layout.build(tmp_path / "layout.blend")
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "layout.blend"))
    scene = bpy.context.scene
    path = capture_bundle(scene, tmp_path / "bundle", task="regional_t2i", prompt=scene["poe_prompt"])
    bundle = bpy_free_read(path)
    assert [obj.name for obj in bundle.objects] == ["House", "Tree", "Balloon", "Car"]
    assert all(obj.prompt and obj.bbox_px[0] is not None for obj in bundle.objects)


def test_example_script_runs_from_the_command_line(tmp_path):
    result = subprocess.run(python_with_bpy(str(ROOT / "blend_examples" / "regional_layout.py"), str(tmp_path / "cli.blend")),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cli.blend").is_file()


def bpy_free_read(path):
    from addon.bundle_schema import read_bundle
    return read_bundle(path.parent)

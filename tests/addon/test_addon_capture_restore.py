"""Capture leaves the user's scene exactly as found, also when it fails half way."""

from __future__ import annotations

import pytest

import bpy

from addon.capture import CaptureError, capture_bundle

pytestmark = pytest.mark.blender


def user_settings(scene) -> dict:
    """Everything capture touches or could touch, as plain values."""
    render, settings = scene.render, scene.render.image_settings
    snapshot = {
        "engine": render.engine, "filepath": render.filepath,
        "resolution": (render.resolution_x, render.resolution_y, render.resolution_percentage),
        "motion_blur": render.use_motion_blur, "compositing": render.use_compositing, "sequencer": render.use_sequencer,
        "samples": scene.cycles.samples, "denoising": scene.cycles.use_denoising,
        "image": tuple(getattr(settings, name, None) for name in ("media_type", "file_format", "color_mode", "color_depth", "exr_codec", "quality")),
        "frame": (scene.frame_current, scene.frame_subframe),
        "layers": [(layer.name, layer.use_pass_z, layer.use_pass_object_index, layer.use) for layer in scene.view_layers],
        "objects": {obj.name: (obj.pass_index, obj.hide_render, obj.hide_viewport, tuple(obj.matrix_world.translation)) for obj in scene.objects},
        "compositor_group": getattr(getattr(scene, "compositing_node_group", None), "name", None),
        "use_nodes": None if hasattr(scene, "compositing_node_group") else scene.use_nodes,  # 4.2
        "camera": scene.camera.name,
    }
    return snapshot


@pytest.fixture
def user_scene(plane_and_cube):
    """The test scene with unusual user settings that capture must put back."""
    scene = plane_and_cube
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.filepath = "//renders/shot_"
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 96, 64, 50
    scene.render.use_motion_blur = True
    scene.cycles.samples, scene.cycles.use_denoising = 77, True
    settings = scene.render.image_settings
    settings.file_format, settings.quality = "JPEG", 61
    scene.objects["Cube"].pass_index, scene.objects["Plane"].pass_index = 7, 3
    scene.frame_end = 3
    scene.frame_set(2)
    if hasattr(scene, "compositing_node_group"):  # Blender >= 5.0
        scene.compositing_node_group = bpy.data.node_groups.new("User compositor", "CompositorNodeTree")
    else:
        scene.use_nodes = True
    return scene


@pytest.mark.parametrize("task", ["insertion", "sim2video"])
def test_settings_identical_after_capture(user_scene, tmp_path, task):
    before = user_settings(user_scene)
    capture_bundle(user_scene, tmp_path / task, task=task, frames=[1, 2], objects=["Cube"], samples=1)
    assert user_settings(user_scene) == before


def test_settings_identical_after_failure_mid_capture(user_scene, tmp_path):
    before = user_settings(user_scene)
    calls = []

    def fail_on_second_frame(done, total):
        calls.append((done, total))
        if done == 2:
            raise RuntimeError("induced failure")

    with pytest.raises(RuntimeError, match="induced failure"):
        capture_bundle(user_scene, tmp_path / "failed", task="sim2video", frames=[1, 2, 3], objects=["Cube", "Plane"],
                       samples=1, progress=fail_on_second_frame)
    assert calls == [(1, 3), (2, 3)]
    assert user_settings(user_scene) == before
    assert not (tmp_path / "failed" / "bundle.json").exists()


def test_settings_identical_after_a_capture_error(user_scene, tmp_path):
    user_scene.objects["Cube"].location.z = 10.0  # behind the camera
    bpy.context.view_layer.update()
    before = user_settings(user_scene)
    with pytest.raises(CaptureError, match="not visible"):
        capture_bundle(user_scene, tmp_path / "error", task="insertion", objects=["Cube"])
    assert user_settings(user_scene) == before

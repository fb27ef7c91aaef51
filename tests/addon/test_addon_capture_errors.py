"""Clear errors that name the problem, raised before anything is rendered."""

from __future__ import annotations

import pytest


from addon.capture import CaptureError, capture_bundle

pytestmark = pytest.mark.blender


def test_no_camera(plane_and_cube, tmp_path):
    plane_and_cube.camera = None
    with pytest.raises(CaptureError, match="no active camera"):
        capture_bundle(plane_and_cube, tmp_path, task="insertion", objects=["Cube"])


def test_object_not_in_scene(plane_and_cube, tmp_path):
    with pytest.raises(CaptureError, match="'Teapot' is not in scene"):
        capture_bundle(plane_and_cube, tmp_path, task="insertion", objects=["Teapot"])


def test_object_not_visible_from_camera(plane_and_cube, tmp_path):
    plane_and_cube.objects["Cube"].location = (0.0, 0.0, 5.0)  # behind the camera
    with pytest.raises(CaptureError, match="'Cube' is not visible from camera"):
        capture_bundle(plane_and_cube, tmp_path, task="insertion", objects=["Cube"])


def test_object_hidden_from_render(plane_and_cube, tmp_path):
    plane_and_cube.objects["Cube"].hide_render = True
    with pytest.raises(CaptureError, match="'Cube' is hidden"):
        capture_bundle(plane_and_cube, tmp_path, task="insertion", objects=["Cube"])


def test_empty_frame_range(plane_and_cube, tmp_path):
    with pytest.raises(CaptureError, match="frame range is empty"):
        capture_bundle(plane_and_cube, tmp_path, task="sim2video", frames=[], objects=["Cube"])
    with pytest.raises(CaptureError, match="frame range is empty"):  # a custom range with end < start
        capture_bundle(plane_and_cube, tmp_path, task="sim2video", frames=range(5, 5), objects=["Cube"])


def test_output_folder_not_writable(plane_and_cube, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(CaptureError, match="cannot be created"):
        capture_bundle(plane_and_cube, blocker / "bundle", task="insertion", objects=["Cube"])


def test_insertion_needs_an_object_and_tasks_are_known(plane_and_cube, tmp_path):
    with pytest.raises(CaptureError, match="needs the object to insert"):
        capture_bundle(plane_and_cube, tmp_path, task="insertion")
    with pytest.raises(CaptureError, match="unknown task"):
        capture_bundle(plane_and_cube, tmp_path, task="preview", objects=["Cube"])
    with pytest.raises(CaptureError, match="unknown quality preset"):
        capture_bundle(plane_and_cube, tmp_path, task="insertion", objects=["Cube"], quality="ultra")


def test_regional_generation_needs_prompts(plane_and_cube, tmp_path):
    with pytest.raises(CaptureError, match="needs a prompt or per-object prompts"):
        capture_bundle(plane_and_cube, tmp_path, task="regional_t2i", objects=["Cube"])

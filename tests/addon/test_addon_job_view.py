"""What the panel shows: progress details, failure reasons with their remedy, and the size
the backend will generate (its caps), including the panel's line for a real scene."""

from __future__ import annotations

import bpy
import pytest

import addon
from addon import job_view, operators_jobs, panel

pytestmark = pytest.mark.blender


def test_progress_details_lists_level_nfe_ess_eta_and_elapsed():
    text = job_view.progress_details({"level": 4, "num_levels": 10, "nfe": 37, "ess": 51.4, "eta_s": 3.2, "elapsed_s": 12.0})
    assert text == "level 4/10  NFE 37  ESS 51  ETA 3s  elapsed 12s"
    assert job_view.progress_details({"level": 1, "num_levels": 2}) == "level 1/2"
    assert job_view.progress_details({"nfe": 12, "planned_nfe": 58}) == "NFE 12/58"
    assert job_view.progress_details({"nfe": 12, "planned_nfe": 58, "forwards": 12, "planned_forwards": 58}) == "NFE 12/58"
    assert job_view.progress_details({"nfe": 12, "planned_nfe": 58, "forwards": 24, "planned_forwards": 116}) == "NFE 12/58  forwards 24/116"  # true CFG


def test_progress_details_skip_what_is_not_a_finite_number():
    """A hostile or broken backend's progress values (strings, NaN, lists, booleans) are left
    out, not raised on: the panel's status line is drawn on every redraw."""
    hostile = {"level": "4", "num_levels": 10, "nfe": float("nan"), "planned_nfe": [1], "forwards": True, "ess": "x", "eta_s": None, "elapsed_s": 12.0}
    assert job_view.progress_details(hostile) == "level 0/10  elapsed 12s"


def test_failure_lines_give_the_reason_then_what_to_do():
    command = "poe-backend models pull --task sim2video --preset preview"
    lines = job_view.failure_lines({"code": "missing_weights", "message": f"weights for wan vace-1.3b are not on this machine; run `{command}` (12.3 GB)"})
    assert lines[0].startswith("weights for wan") and lines[-1] == f"Run: {command}"
    lines = job_view.failure_lines({"code": "out_of_memory", "message": "out of memory while running the task"})
    assert lines == ["out of memory while running the task", "Lower one of: preset, particles, levels, offload"]
    assert job_view.failure_lines(None, "the backend is not reachable") == ["the backend is not reachable"]


def test_generated_size_applies_the_backends_caps_and_model_rate():
    frames = list(range(1, 251))
    assert job_view.generated_size("sim2video", 1920, 1080, frames, 24.0) == "832x464, 81 frames at 24 fps"  # backend not reached: scene rate
    tasks = [{"name": "sim2video", "fps": 16.0, "parameters": [{"name": "max_side", "default": 480}, {"name": "max_frames", "default": 33}]}]
    assert job_view.generated_size("sim2video", 1920, 1080, frames, 24.0, tasks) == "480x256, 33 frames at 16 fps"
    # a 2 s simulation at 24 fps (frames 1..49) is 33 frames at Wan's 16 fps, not 49 cut to 45
    tasks[0]["parameters"] = []
    assert job_view.generated_size("sim2video", 832, 480, list(range(1, 50)), 24.0, tasks) == "832x480, 33 frames at 16 fps"
    assert job_view.generated_size("insertion", 1920, 1080, [1], 24.0, tasks) == "1920x1080, 1 image"


@pytest.fixture
def registered():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon.register()
    yield bpy.context.scene
    addon.unregister()


def test_panel_shows_the_capped_size_of_the_scene(registered, monkeypatch):
    scene = registered
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 1920, 1080, 100
    scene.frame_start, scene.frame_end = 1, 250
    scene.poe.task = "sim2video"
    monkeypatch.setattr(operators_jobs.SESSION, "tasks", None)
    assert panel.generation_summary(scene) == "Will generate: 832x464, 81 frames at 24 fps"
    scene.poe.use_scene_range, scene.poe.frame_start, scene.poe.frame_end = False, 10, 5
    assert panel.generation_summary(scene).startswith("Cannot capture: the frame range is empty")

"""Blender round trip with real bpy and the real backend: the tracker's tick loop (what
the bpy.app.timers callback runs) drives a job to the image plane, reloading replaces,
Cancel works, and a stopped backend gives a clear message; then the same through the
operators."""

from __future__ import annotations

import json
import signal
import time
import types
from pathlib import Path

import bpy
import pytest

import addon
from addon import operators_jobs, results
from addon.client import Client
from addon.jobs import JobTracker
from tests.addon.roundtrip_fixtures import backend_fixture  # noqa: F401 - the backend fixture
from tests.server.conftest import LONG, QUICK, start_backend, write_bundle

pytestmark = pytest.mark.blender


@pytest.fixture
def scene():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = 64, 48
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(camera)
    scene.camera = camera
    return scene


def _tick_until(tick, condition, timeout: float = 60.0) -> None:
    """Call ``tick`` (what the timer runs) every 50 ms until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        tick()
        time.sleep(0.05)


def _drive(tracker: JobTracker, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while tracker.tick() is not None:
        assert time.monotonic() < deadline, [job.status_line() for job in tracker.jobs.values()]
        time.sleep(0.05)


def _planes(job_id: str) -> list:
    return [obj for obj in bpy.data.objects if obj.get("poe_job_id") == job_id]


def test_tick_loop_brings_the_result_in_as_an_image_plane(backend, scene, tmp_path):
    tracker = JobTracker(Client(backend.url, backend.token), tmp_path / "results", lambda result: results.load_result(scene, result))
    bundle = write_bundle(backend.data_dir / "rt-bundle", prompt="a red disc", seed=11, width=64, height=48)
    tracked = tracker.submit(bundle, params={**QUICK, "seed": 4})
    states = []
    while tracker.tick() is not None:
        states.append(tracked.status_line())
        time.sleep(0.05)
    assert tracked.state == "done" and tracked.loaded, tracked.status_line()
    (plane,) = _planes(tracked.job_id)
    assert plane.parent == scene.camera and plane["poe_task"] == "toy2d" and plane["poe_prompt"] == "a red disc"
    assert plane["poe_seed"] == 4 and json.loads(plane["poe_params"])["particles"] == QUICK["particles"]
    image = plane.active_material.node_tree.nodes["Image Texture"].image
    assert image["poe_job_id"] == tracked.job_id and image.packed_file is not None and image.size[0] > 0
    # the plane fills the camera view: its corners are the view frame scaled to its depth
    corners = [vertex.co for vertex in plane.data.vertices]
    frame = scene.camera.data.view_frame(scene=scene)
    depth = -corners[0].z
    for corner, expected in zip(corners, frame):
        assert corner.x == pytest.approx(expected.x * depth / -expected.z, rel=1e-5) and corner.y == pytest.approx(expected.y * depth / -expected.z, rel=1e-5)
    assert depth == pytest.approx(1.5 * scene.camera.data.clip_start)

    counts = (len(bpy.data.objects), len(bpy.data.images), len(bpy.data.meshes), len(bpy.data.materials))
    results.load_result(scene, tracker.fetch_result(tracker.client.job(tracked.job_id)))
    assert (len(bpy.data.objects), len(bpy.data.images), len(bpy.data.meshes), len(bpy.data.materials)) == counts
    assert len(_planes(tracked.job_id)) == 1

    results.load_result(scene, tracked.result, as_background=True)
    results.load_result(scene, tracked.result, as_background=True)
    assert [entry.image["poe_job_id"] for entry in scene.camera.data.background_images] == [tracked.job_id]


def test_cancel_through_the_tracker(backend, scene, tmp_path):
    loaded = []
    tracker = JobTracker(Client(backend.url, backend.token), tmp_path / "results", loaded.append)
    tracked = tracker.submit(write_bundle(backend.data_dir / "rt-cancel"), params=LONG)
    while not (tracked.state == "running" and tracked.progress):
        tracker.tick()
        time.sleep(0.05)
    assert "level" in tracked.status_line() and "NFE" in tracked.status_line()
    tracker.cancel(tracked.job_id)
    _drive(tracker)
    assert tracked.state == "cancelled" and "cancelled" in tracked.message and loaded == []


def test_backend_down_gives_a_clear_message(tmp_path, scene):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    running = start_backend(data_dir)
    tracker = JobTracker(Client(running.url, running.token, timeout=2), tmp_path / "results")
    # submitted with the default timeout: on a loaded 2-core CI machine a submit can take > 2 s
    tracked = tracker.track(Client(running.url, running.token).submit(write_bundle(data_dir / "b"), params=LONG))
    running.stop(signal.SIGKILL)
    _tick_until(tracker.tick, lambda: tracked.message, timeout=30)
    assert tracker.tick() is not None  # keeps polling: the backend may come back
    assert "not reachable" in tracked.message and running.url in tracked.message
    assert "not reachable" in tracked.status_line()


# ---- the operators, with the preferences the add-on's prefs(context) would return ----------

@pytest.fixture
def operators(backend, tmp_path, monkeypatch):
    preferences = types.SimpleNamespace(backend_url=backend.url, token=backend.token, backend_command="", output_dir=str(tmp_path / "poe"), result_as_background=False)
    monkeypatch.setattr(addon.preferences, "prefs", lambda context: preferences)
    monkeypatch.setattr(operators_jobs, "SESSION", operators_jobs.Session())
    for cls in operators_jobs.CLASSES:
        bpy.utils.register_class(cls)
    yield preferences
    for cls in reversed(operators_jobs.CLASSES):
        bpy.utils.unregister_class(cls)


def _drive_session(timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while operators_jobs.SESSION.tick() is not None:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_generate_load_and_cancel_operators(operators, backend, scene):
    bundle = write_bundle(backend.data_dir / "op-bundle", prompt="from the operator")
    assert bpy.ops.poe.generate(bundle_dir=str(bundle)) == {"FINISHED"}
    _drive_session()
    (tracked,) = operators_jobs.SESSION.tracker.jobs.values()
    assert tracked.state == "done" and len(_planes(tracked.job_id)) == 1
    before = tracked.result.primary
    assert bpy.ops.poe.load_result(job_id=tracked.job_id) == {"FINISHED"}
    _drive_session()  # Load goes the way of a job that has just finished: worker, then the timer
    assert tracked.loaded and tracked.result.primary == before
    assert len(_planes(tracked.job_id)) == 1 and _planes(tracked.job_id)[0]["poe_prompt"] == "from the operator"

    long_bundle = write_bundle(backend.data_dir / "op-long", params=LONG)
    bpy.ops.poe.generate(bundle_dir=str(long_bundle))
    running = list(operators_jobs.SESSION.tracker.jobs.values())[-1]
    deadline = time.monotonic() + 60
    while not (running.state == "running" and (running.progress or {}).get("level")):
        assert time.monotonic() < deadline, running.status_line()
        operators_jobs.SESSION.tick()
        time.sleep(0.05)
    layout = RecordingLayout()
    operators_jobs.draw_jobs(layout, bpy.context)
    level = running.progress["level"]
    (bar,) = [call for call in layout.calls if call[0] == "progress"]
    assert bar[1] == pytest.approx(running.progress["fraction"]) and 0 < bar[1] < 1
    assert any(kind == "label" and text.startswith(f"level {level}/{running.progress['num_levels']}") and "NFE" in text and "ETA" in text for kind, text in layout.calls)
    assert ("operator", "poe.cancel") in layout.calls  # the running job's own Cancel button
    assert bpy.ops.poe.cancel(job_id=running.job_id) == {"FINISHED"}
    _drive_session()
    assert [job.state for job in operators_jobs.SESSION.tracker.jobs.values()] == ["done", "cancelled"]
    stopped = operators_jobs.SESSION.tracker.client.job(running.job_id)["progress"]
    # The status's level is persisted at most every 0.5 s, and toy levels take milliseconds,
    # so the row's level may be many levels old: the panel's Cancel must stop the job before
    # its last level (within one sampler step of the request is tested in tests/server).
    assert level <= stopped["level"] < stopped["num_levels"], (level, stopped)
    layout = RecordingLayout()
    operators_jobs.draw_jobs(layout, bpy.context)
    labels = [text for kind, text in layout.calls if kind == "label"]
    assert labels[0] == "toy2d done" and labels[1] == "toy2d cancelled" and "cancelled" in labels[2]
    assert ("operator", "poe.start_backend") in layout.calls and ("operator", "poe.load_result") in layout.calls


def test_a_failed_jobs_reason_and_remedy_are_drawn(operators, backend):
    tracker = operators_jobs.SESSION.tracker_for(addon.preferences.backend_settings())
    command = "poe-backend models pull --task insertion --preset default"
    failed = tracker.track({"id": "f1", "task": "insertion", "state": "queued"})
    tracker._update(failed, {"id": "f1", "task": "insertion", "state": "failed", "error": {"code": "missing_weights", "message": f"no weights for flux depth: run {command}"}})
    layout = RecordingLayout()
    operators_jobs.draw_jobs(layout, bpy.context)
    labels = [text for kind, text in layout.calls if kind == "label"]
    assert labels[0] == "insertion failed" and labels[1].startswith("no weights for flux depth") and labels[-1] == f"Run: {command}"
    assert ("operator", "poe.cancel") not in layout.calls


class RecordingLayout:
    """Stands in for bpy.types.UILayout (which scripts cannot create) and records calls."""

    def __init__(self, calls: list | None = None) -> None:
        self.calls = [] if calls is None else calls

    def row(self, **kwargs):
        return RecordingLayout(self.calls)

    box = row

    def label(self, text: str = "", **kwargs) -> None:
        self.calls.append(("label", text))

    def progress(self, factor: float = 0.0, **kwargs) -> None:
        self.calls.append(("progress", factor))

    def operator(self, idname: str, **kwargs):
        self.calls.append(("operator", idname))
        return types.SimpleNamespace()


def test_operator_errors_are_reports_not_tracebacks(operators, backend, scene, tmp_path):
    # Generate does not wait for the backend: a refusal or an unreachable backend fails the job's row
    assert bpy.ops.poe.generate(bundle_dir=str(write_bundle(backend.data_dir / "op-bad", params={"particles": 0}))) == {"FINISHED"}
    operators.backend_url = "http://127.0.0.1:9"
    assert bpy.ops.poe.generate(bundle_dir=str(write_bundle(backend.data_dir / "op-down"))) == {"FINISHED"}
    _tick_until(operators_jobs.SESSION.tick, lambda: all(job.finished for job in operators_jobs.SESSION.tracker.jobs.values()))
    refused, unreachable = operators_jobs.SESSION.tracker.jobs.values()
    assert refused.state == unreachable.state == "failed"
    assert refused.record["error"]["field"] == "params.particles" and "params.particles" in refused.message
    assert "is not reachable" in unreachable.message
    with pytest.raises(RuntimeError, match="could not capture or submit"):
        bpy.ops.poe.generate()  # capture needs addon.capture and scene.poe (the capture branch)
    operators.backend_command = f"{Path('/nonexistent/poe-backend')} serve"
    assert bpy.ops.poe.start_backend() == {"FINISHED"}  # the start and its error happen on the worker
    _tick_until(operators_jobs.SESSION.tick, lambda: not operators_jobs.SESSION.starting)
    assert "could not run" in operators_jobs.SESSION.backend_status
    layout = RecordingLayout()
    operators_jobs.draw_jobs(layout, bpy.context)
    assert ("label", operators_jobs.SESSION.backend_status) in layout.calls


def test_start_local_backend_runs_the_command_and_picks_up_the_token(operators, tmp_path):
    import shlex
    import sys

    from addon.jobs import token_path_from_command
    from tests.server.conftest import free_port

    port = free_port()
    data_dir = tmp_path / "started"
    operators.backend_url, operators.token = f"http://127.0.0.1:{port}", ""
    operators.backend_command = shlex.join([sys.executable, "-m", "poe_backend", "serve", "--port", str(port), "--data-dir", str(data_dir)])
    assert token_path_from_command(operators.backend_command) == data_dir / "token"
    try:
        assert bpy.ops.poe.start_backend() == {"FINISHED"}
        _tick_until(operators_jobs.SESSION.tick, lambda: not operators_jobs.SESSION.starting, timeout=120)
        assert operators_jobs.SESSION.backend_status.startswith("backend ") and " running on " in operators_jobs.SESSION.backend_status
        assert operators.token == (data_dir / "token").read_text().strip()
        assert Client(operators.backend_url, operators.token).jobs() == []
    finally:
        process = operators_jobs.SESSION.backend
        operators_jobs.shutdown()  # what the add-on's unregister() calls
        if process is not None:
            process.wait(timeout=30)
            assert process.returncode is not None

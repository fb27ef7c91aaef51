"""Nothing slow on the main thread, against the real backend on 127.0.0.1: the tick (what
the bpy.app.timers callback runs) returns at once while the backend cannot answer (its
process is stopped with SIGSTOP, so every request hangs), progress still reaches the
job's panel row once it answers again, and a backend on this machine hands the outputs
over as hard links of its job folder instead of an HTTP copy."""

from __future__ import annotations

import os
import signal
import time

import bpy
import pytest

from addon import operators_jobs
from addon.client import Client
from addon.jobs import JobTracker
from tests.addon.roundtrip_fixtures import backend_fixture  # noqa: F401 - the backend fixture
from tests.addon.test_roundtrip import RecordingLayout, _drive, _tick_until
from tests.server.conftest import LONG, QUICK, write_bundle

pytestmark = pytest.mark.blender

#: A tick that waited on the stopped backend would take the client's timeout (5 s).
TICK_LIMIT_S = 0.25


def test_the_tick_never_waits_on_a_backend_that_does_not_answer(backend, tmp_path, monkeypatch):
    tracker = JobTracker(Client(backend.url, backend.token), tmp_path / "results")
    monkeypatch.setattr(operators_jobs, "SESSION", operators_jobs.Session(tracker=tracker))
    tracked = tracker.submit(write_bundle(backend.data_dir / "w-long"), params=LONG)
    _tick_until(tracker.tick, lambda: tracked.state == "running" and tracked.progress)
    os.kill(backend.process.pid, signal.SIGSTOP)
    try:
        longest, stopped_at = 0.0, time.monotonic()
        while time.monotonic() - stopped_at < 1.5:
            start = time.perf_counter()
            assert tracker.tick() is not None
            longest = max(longest, time.perf_counter() - start)
            time.sleep(0.02)
        assert tracker.worker.busy  # the poll is still waiting for the stopped backend
        level_while_stopped = tracked.progress["level"]
    finally:
        os.kill(backend.process.pid, signal.SIGCONT)
    assert longest < TICK_LIMIT_S, longest
    _tick_until(tracker.tick, lambda: tracked.progress["level"] > level_while_stopped)
    layout = RecordingLayout()
    operators_jobs.draw_jobs(layout, bpy.context)
    assert any(kind == "label" and text.startswith(f"level {tracked.progress['level']}/") for kind, text in layout.calls)
    tracker.cancel(tracked.job_id)
    _drive(tracker)
    assert tracked.state == "cancelled"


def test_outputs_of_a_backend_on_this_machine_are_linked_not_downloaded(backend, tmp_path):
    tracker = JobTracker(Client(backend.url, backend.token), tmp_path / "results")
    tracked = tracker.submit(write_bundle(backend.data_dir / "w-quick"))
    _drive(tracker)
    assert tracked.state == "done" and tracked.result is not None
    job_outputs = backend.data_dir / "jobs" / tracked.job_id / "outputs"
    assert tracked.record["output_dir"] == str(job_outputs)
    for name, path in tracked.result.outputs.items():
        served = job_outputs / tracked.record["outputs"][name]
        assert path == tmp_path / "results" / tracked.job_id / tracked.record["outputs"][name]
        assert os.stat(path).st_ino == os.stat(served).st_ino  # the same file: no bytes went over HTTP

    # Seen from another machine (an SSH tunnel to localhost) the job's folder is not there:
    # the outputs are downloaded, byte for byte.
    remote_view = {**tracked.record, "output_dir": str(tmp_path / "not-on-this-machine")}
    downloaded = tracker.client.fetch_outputs(remote_view, tmp_path / "downloaded")
    for name, path in downloaded.items():
        served = job_outputs / tracked.record["outputs"][name]
        assert os.stat(path).st_ino != os.stat(served).st_ino and path.read_bytes() == served.read_bytes()


def test_an_upload_runs_on_the_worker_and_its_row_becomes_the_job(backend, tmp_path):
    """A bundle the backend cannot read by path goes as an upload, which takes as long as
    its bytes take: submit returns a ``submitting`` row at once, and that same row becomes
    the backend's job; an upload the backend refuses fails its row with the field named."""
    tracker = JobTracker(Client(backend.url, backend.token), tmp_path / "results")
    tracked = tracker.submit(write_bundle(tmp_path / "outside-the-roots"), params=QUICK)  # refused by path: uploaded
    assert tracked.state == "submitting" and tracker.active() == [] and tracker.worker.busy
    _drive(tracker)
    assert tracked.state == "done" and tracked.result is not None and tracker.jobs[tracked.job_id] is tracked
    assert (backend.data_dir / "jobs" / tracked.job_id / "bundle" / "bundle.json").is_file()  # it came as an upload
    refused = tracker.submit(write_bundle(tmp_path / "outside-again"), params={"particles": -3})
    _drive(tracker)
    assert refused.state == "failed" and refused.record["error"]["field"] == "params.particles" and "params.particles" in refused.message

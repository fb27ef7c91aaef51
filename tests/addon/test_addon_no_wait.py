"""Nothing on Blender's main thread waits on the network, and one stuck request never holds
up the others, against a fake backend on 127.0.0.1 that holds chosen requests (a hostile
or overloaded backend): Generate and ``JobTracker.submit`` return at once while the
backend sits on the submission (the row becomes the job, or shows the refusal with its
field, when the answer comes), and a job whose status or download stalls does not delay
another job's poll."""

from __future__ import annotations

import json
import re
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import bpy
import pytest

import addon
from addon import operators_jobs
from addon.client import Client
from addon.jobs import JobTracker
from tests.addon.test_roundtrip import RecordingLayout

pytestmark = pytest.mark.blender

#: How long the fake backend holds a request at most (released earlier by the test); the
#: client's 5 s deadline is longer, so a held request is answered, only late.
HOLD_S = 3.0
#: What "at once" means for a call on the main thread.
AT_ONCE_S = 0.2

ACCEPTED = "20260101-000000-aaaaaa"
STALLED = "20260101-000000-bbbbbb"
LIVELY = "20260101-000000-cccccc"
REFUSAL = {"error": {"code": "out_of_range", "field": "params.particles", "message": "params.particles: must be at least 1"}}


class FakeBackend:
    """A backend on 127.0.0.1 that serves each request on its own thread. ``POST /v1/jobs``
    accepts the bundle (answers ``accepted``: job :data:`ACCEPTED`), or refuses it
    (:data:`REFUSAL`) when its ``params.particles`` (the request's over its bundle.json's)
    is negative;
    ``GET /v1/jobs/{id}`` answers ``statuses[id]`` and ``POST /v1/jobs/{id}/cancel``
    ``cancelled`` (the job cancelled before it started); an output of a job is
    ``result.json``. A request whose route is in ``held`` waits until
    :attr:`release` is set (at most :data:`HOLD_S`)."""

    def __init__(self, statuses: dict[str, dict] | None = None, held: set[str] = frozenset(), accepted: object = None, cancelled: object = None) -> None:
        self.statuses, self.held, self.release = statuses or {}, held, threading.Event()
        self.accepted = accepted or {"id": ACCEPTED, "task": "toy2d", "state": "queued"}
        self.cancelled = cancelled or {"id": ACCEPTED, "task": "toy2d", "state": "cancelled", "error": {"code": "cancelled", "message": "cancelled before it started"}}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                backend.hold(self.path)
                if self.path == "/v1/tasks":
                    return self.answer(200, {"tasks": []})
                if match := re.fullmatch(r"/v1/jobs/([^/]+)", self.path):
                    return self.answer(200, backend.statuses[match.group(1)])
                return self.answer(200, {"primary": "result.json", "kind": "image"})  # an output

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                backend.hold(self.path)
                if self.path.endswith("/cancel"):
                    return self.answer(200, backend.cancelled)
                bundle_json = Path(payload["bundle_path"]) / "bundle.json"
                params = {**(json.loads(bundle_json.read_text()).get("params", {}) if bundle_json.is_file() else {}), **payload.get("params", {})}
                if params.get("particles", 1) < 0:
                    return self.answer(400, REFUSAL)
                return self.answer(200, backend.accepted)

            def answer(self, status: int, payload: object) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler

    def hold(self, route: str) -> None:
        if route in self.held:
            self.release.wait(HOLD_S)


@pytest.fixture
def fake_backend():
    backends = []

    def start(**kwargs) -> FakeBackend:
        backends.append(FakeBackend(**kwargs))
        return backends[-1]

    yield start
    for backend in backends:
        backend.close()


def _tick_until(tick, condition, timeout: float) -> float:
    """Call ``tick`` every 20 ms until ``condition()`` holds; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "not within the time"
        tick()
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.parametrize("stalls", ["status", "download"])
def test_a_stalled_request_does_not_hold_up_another_jobs_poll(fake_backend, tmp_path, stalls):
    """The stalled job's status (a poll is bounded at 5 s) or its result download (up to
    300 s) is held by the backend; the other job's status still reaches its row at once."""
    stalled_record = {"id": STALLED, "task": "toy2d", "state": "running"}
    held = f"/v1/jobs/{STALLED}"
    if stalls == "download":
        stalled_record.update(state="done", outputs={"result.json": "result.json"})
        held += "/outputs/result.json"
    lively_record = {"id": LIVELY, "task": "toy2d", "state": "running", "progress": {"fraction": 0.4, "level": 4, "num_levels": 10}}
    backend = fake_backend(statuses={STALLED: stalled_record, LIVELY: lively_record}, held={held})
    tracker = JobTracker(Client(backend.url), tmp_path / "results")
    stalled = tracker.track({"id": STALLED, "task": "toy2d", "state": "queued"})  # polled first
    lively = tracker.track({"id": LIVELY, "task": "toy2d", "state": "queued"})
    took = _tick_until(tracker.tick, lambda: lively.state == "running", timeout=HOLD_S - 0.5)
    assert took < 1.0 and lively.progress["level"] == 4
    assert STALLED in tracker._polling and not stalled.loaded  # still held by the backend
    backend.release.set()
    _tick_until(tracker.tick, lambda: stalled.finished if stalls == "download" else stalled.state == "running", timeout=HOLD_S)
    assert stalls == "status" or (stalled.loaded and stalled.result.manifest["primary"] == "result.json")


def test_submit_returns_at_once_and_the_row_becomes_the_job(fake_backend, tmp_path):
    backend = fake_backend(statuses={ACCEPTED: {"id": ACCEPTED, "task": "toy2d", "state": "running"}}, held={"/v1/jobs"})
    tracker = JobTracker(Client(backend.url), tmp_path / "results")
    started = time.perf_counter()
    tracked = tracker.submit(tmp_path / "bundle", task="toy2d", params={"particles": 8})
    assert time.perf_counter() - started < AT_ONCE_S
    assert tracked.state == "submitting" and tracker.jobs[tracked.job_id] is tracked and tracker.active() == []
    for _ in range(5):  # the backend still sits on the submission: ticks return at once
        started = time.perf_counter()
        assert tracker.tick() is not None and time.perf_counter() - started < AT_ONCE_S
        time.sleep(0.02)
    assert tracked.state == "submitting" and tracker.worker.busy
    backend.release.set()
    _tick_until(tracker.tick, lambda: tracked.state == "running", timeout=HOLD_S)
    assert tracked.job_id == ACCEPTED and list(tracker.jobs) == [ACCEPTED] and tracker.jobs[ACCEPTED] is tracked


def test_a_refused_submission_fails_its_row_with_the_field(fake_backend, tmp_path):
    backend = fake_backend()
    tracker = JobTracker(Client(backend.url), tmp_path / "results")
    refused = tracker.submit(tmp_path / "bundle", task="toy2d", params={"particles": -3})
    _tick_until(tracker.tick, lambda: refused.finished, timeout=HOLD_S)
    assert refused.state == "failed" and refused.record["error"] == REFUSAL["error"]
    assert "params.particles: must be at least 1" in refused.message and refused.job_id.startswith("submit-")
    assert tracker.tick() is None  # nothing left to follow


@pytest.mark.parametrize("answer", [["not", "a", "job"], {"id": "../escape", "state": "queued"}])
def test_a_submission_answered_with_something_other_than_a_job_fails_its_row(fake_backend, tmp_path, answer):
    """The answer's id becomes the row's key and, later, a folder name: it must be a job id
    of the backend's format (and the answer a job record), else the row fails, the tick
    does not raise."""
    backend = fake_backend(accepted=answer)
    tracker = JobTracker(Client(backend.url), tmp_path / "results")
    tracked = tracker.submit(tmp_path / "bundle", task="toy2d")
    _tick_until(tracker.tick, lambda: tracked.finished, timeout=HOLD_S)
    assert tracked.state == "failed" and tracked.job_id.startswith("submit-") and ("not a job" in tracked.message)


def test_a_cancel_answered_before_an_older_poll_leaves_the_row_cancelled(fake_backend, tmp_path):
    """A poll and a cancel of one job now run at once: the backend holds the poll (its
    answer, ``queued``, is older), the cancel's ``cancelled`` comes first and stays: a
    finished job's row never goes back to queued (nor shows its Cancel button again)."""
    backend = fake_backend(statuses={ACCEPTED: {"id": ACCEPTED, "task": "toy2d", "state": "queued"}}, held={f"/v1/jobs/{ACCEPTED}"})
    tracker = JobTracker(Client(backend.url), tmp_path / "results")
    tracked = tracker.track({"id": ACCEPTED, "task": "toy2d", "state": "queued"})
    tracker.tick()  # its poll, held by the backend
    tracker.cancel(ACCEPTED)
    _tick_until(tracker.tick, lambda: tracked.state == "cancelled", timeout=HOLD_S - 0.5)
    backend.release.set()
    _tick_until(tracker.tick, lambda: not tracker.worker.busy, timeout=HOLD_S)  # the poll's "queued" came and went
    assert tracked.state == "cancelled" and tracked.message == "cancelled before it started" and tracker.tick() is None


def test_a_cancel_answered_with_something_other_than_a_job_is_the_rows_message(fake_backend, tmp_path):
    backend = fake_backend(statuses={ACCEPTED: {"id": ACCEPTED, "state": "running"}}, held={f"/v1/jobs/{ACCEPTED}"}, cancelled=["not", "a", "job"])
    tracker = JobTracker(Client(backend.url), tmp_path / "results")
    tracked = tracker.track({"id": ACCEPTED, "task": "toy2d", "state": "running"})
    tracker.cancel(ACCEPTED)
    _tick_until(tracker.tick, lambda: tracked.message, timeout=HOLD_S - 0.5)  # the tick does not raise
    assert tracked.message == "could not cancel: the backend answered the cancel request with a list, not a job"


@pytest.fixture
def operators(fake_backend, tmp_path, monkeypatch):
    """The job operators registered, with preferences pointing at a fake backend that holds
    every submission until released."""
    backend = fake_backend(held={"/v1/jobs"})
    preferences = types.SimpleNamespace(backend_url=backend.url, token="", backend_command="", output_dir=str(tmp_path / "poe"), result_as_background=False)
    monkeypatch.setattr(addon.preferences, "prefs", lambda context: preferences)
    monkeypatch.setattr(operators_jobs, "SESSION", operators_jobs.Session())
    for cls in operators_jobs.CLASSES:
        bpy.utils.register_class(cls)
    yield backend
    for cls in reversed(operators_jobs.CLASSES):
        bpy.utils.unregister_class(cls)


def _panel_labels() -> list[tuple[str, str]]:
    layout = RecordingLayout()
    operators_jobs.draw_jobs(layout, bpy.context)
    return layout.calls


def test_generate_returns_at_once_and_the_panel_row_shows_a_refusal(operators, tmp_path):
    """Generate used to wait for the backend's answer on the main thread and pop up its
    refusal; now it returns at once and the job's panel row names the field."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text(json.dumps({"params": {"particles": -3}}))
    started = time.perf_counter()
    assert bpy.ops.poe.generate(bundle_dir=str(bundle)) == {"FINISHED"}
    assert time.perf_counter() - started < AT_ONCE_S
    (row,) = operators_jobs.SESSION.tracker.jobs.values()
    labels = _panel_labels()
    assert any(kind == "label" and text.endswith(" submitting") for kind, text in labels) and ("operator", "poe.cancel") not in labels
    operators.release.set()
    _tick_until(operators_jobs.SESSION.tick, lambda: row.finished, timeout=HOLD_S)
    assert ("label", "params.particles: must be at least 1") in _panel_labels()

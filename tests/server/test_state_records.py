"""Restart reads every ``jobs/<id>/state.json`` as hostile input: a bad record is skipped
and named in the server's log, no record reaches a path outside its own folder, a
restored queued job runs only a bundle under the allowed roots; a read-only jobs dir is a
503 at submission (and a clear error at start); a running job's state file is rewritten
only when its progress changed.

Read-only is real: as root (CI), where permissions do not stop writes, ``jobs/`` is a tmpfs
remounted read-only; otherwise its mode is 0500."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from poe_backend.server import jobs as jobs_module
from poe_backend.server.datadir import DataDirUnwritable
from poe_backend.server.jobs import Job, JobStore, new_job_id
from poe_backend.tasks import TASK_CLASSES
from poe_backend.tasks.base import Task, TaskContext, TaskResult
from tests.server.conftest import LONG, QUICK, REPO, Backend, assert_field, post_tar, start_backend, tar_of, wait_for, wait_for_progress, write_bundle

AS_ROOT = os.geteuid() == 0
#: One record per bad field: (field, value). Each must be skipped and named in the log.
BAD_FIELDS = [
    ("created", "yesterday"),
    ("started", float("nan")),
    ("state", "exploded"),
    ("progress", {"fraction": "half"}),
    ("outputs", {"image": 7}),
    ("params", ["not", "an", "object"]),
    ("error", {"code": 5}),
    ("surprise", 1),
]


@contextlib.contextmanager
def private_mount(directory: Path) -> Iterator[None]:
    """A small tmpfs on ``directory`` when running as root (so :func:`read_only` can
    remount it), else nothing."""
    if not AS_ROOT:
        yield
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(directory)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """``directory`` (a :func:`private_mount`) refuses every write meanwhile."""
    if AS_ROOT:
        subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True)
    else:
        directory.chmod(0o500)
    try:
        yield
    finally:
        if AS_ROOT:
            subprocess.run(["mount", "-o", "remount,rw", str(directory)], check=True)
        else:
            directory.chmod(0o700)


def record(job_id: str, **fields: Any) -> dict[str, Any]:
    """A done toy2d job's state record, with ``fields`` replaced or added."""
    job = Job(id=job_id, task="toy2d", bundle_dir="/nowhere", params=dict(QUICK), models="tiny", bundle={"prompt": "restored"}, state="done", finished=time.time())
    return {**job.to_json(), **fields}


def write_record(jobs: Path, data: dict[str, Any] | str, folder: str | None = None) -> str:
    """``jobs/<folder>/state.json`` holding ``data`` (JSON text as is), with an empty
    ``outputs/``; returns the folder's name (a fresh job id by default)."""
    folder = folder or new_job_id()
    (jobs / folder / "outputs").mkdir(parents=True)
    (jobs / folder / "state.json").write_text(data if isinstance(data, str) else json.dumps(data))
    return folder


@dataclass
class Restored:
    """A backend started on a data dir of hand-written records. ``root`` holds ``a/data``
    (so ``jobs/../../../x`` is ``root/x``), ``bundles`` (the allowed root) and the
    victims outside; ``listed`` maps roles to the jobs listed after the start, ``bad`` each
    skipped record's folder to the field its log line names."""

    backend: Backend
    root: Path
    listed: dict[str, str]
    bad: dict[str, str]

    @property
    def jobs(self) -> Path:
        return self.backend.data_dir / "jobs"

    def server_log(self) -> str:
        port = self.backend.url.rsplit(":", 1)[1]
        return (self.backend.data_dir.parent / f"backend-{port}.log").read_text()


def write_hostile_records(root: Path, jobs: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The records of :class:`Restored`: those listed after the start (by role) and the
    skipped ones (folder -> field)."""
    now = time.time()
    (root / "victim").mkdir()
    (root / "victim" / "keep.txt").write_text("precious")
    (root / "outside").mkdir()
    listed = {"done": write_record(jobs, record(done := new_job_id(), outputs={"image": "image.png"}), done)}
    (jobs / done / "outputs" / "image.png").write_bytes(b"\x89PNG restored")
    links_out = new_job_id()
    write_record(jobs, record(links_out, outputs={"notes": "notes.txt"}), links_out)
    (jobs / links_out / "outputs" / "notes.txt").symlink_to(jobs.parent / "token")
    listed["links_out"] = links_out
    queued_outside = new_job_id()
    write_record(jobs, record(queued_outside, state="queued", finished=None, created=now - 10, bundle_dir=str(write_bundle(root / "elsewhere"))), queued_outside)
    listed["queued_outside"] = queued_outside
    queued = new_job_id()
    write_record(jobs, record(queued, state="queued", finished=None, created=now, bundle_dir=str(write_bundle(jobs.parent / "b"))), queued)
    listed["queued"] = queued
    bad = {}
    for name, value in BAD_FIELDS:
        folder = new_job_id()
        bad[write_record(jobs, record(folder, **{name: value}), folder)] = name
    bad[write_record(jobs, record("../../../victim", created=1000.0, finished=1000.0))] = "id"
    bad[write_record(jobs, record(str(root / "outside"), state="running", finished=None))] = "id"
    bad[write_record(jobs, record(folder := new_job_id(), outputs={"token": "../../../token"}), folder)] = "outputs"
    bad[write_record(jobs, "[" * 100_000)] = "state.json"
    bad[write_record(jobs, record(folder := new_job_id(), params={"pad": "x" * (2 << 20)}), folder)] = "state.json"
    (root / "linked-job").mkdir()
    linked = new_job_id()
    (root / "linked-job" / "state.json").write_text(json.dumps(record(linked)))
    (jobs / linked).symlink_to(root / "linked-job")
    return listed, bad


@pytest.fixture(scope="module")
def restored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Restored]:
    root = tmp_path_factory.mktemp("records")
    data = root / "a" / "data"
    jobs = data / "jobs"
    jobs.mkdir(parents=True)
    (root / "bundles").mkdir()
    with private_mount(jobs):
        listed, bad = write_hostile_records(root, jobs)
        # --keep-days 1: retention at start reaches the 1970 record (the victim's) and spares the good jobs
        backend = start_backend(data, "--allow-root", str(root / "bundles"), "--keep-days", "1")
        try:
            yield Restored(backend, root, listed, bad)
        finally:
            backend.stop()


def test_a_restart_lists_the_valid_records_only_and_names_the_bad_ones(restored):
    response = restored.backend.client().get("/v1/jobs")
    assert response.status_code == 200, response.text
    assert {job["id"] for job in response.json()["jobs"]} == set(restored.listed.values())
    lines = restored.server_log().splitlines()
    for folder, field in restored.bad.items():
        assert any(folder in line and f": {field}:" in line for line in lines), (folder, field, lines)


def test_restored_records_reach_nothing_outside_their_folders(restored):
    client = restored.backend.client()
    assert (restored.root / "victim" / "keep.txt").read_text() == "precious"
    assert list((restored.root / "outside").iterdir()) == []
    assert (restored.root / "linked-job" / "state.json").is_file() and restored.jobs.is_dir()
    token = restored.backend.token
    for job_id, name in ((restored.listed["links_out"], "notes"), (next(folder for folder, field in restored.bad.items() if field == "outputs"), "token")):
        response = client.get(f"/v1/jobs/{job_id}/outputs/{name}")
        assert response.status_code == 404 and token not in response.text, response.text
    assert client.get(f"/v1/jobs/{restored.listed['done']}/outputs/image").content == b"\x89PNG restored"


def test_a_restored_queued_job_runs_only_a_bundle_under_the_allowed_roots(restored):
    client = restored.backend.client()
    assert wait_for(client, restored.listed["queued"], {"done", "failed"})["state"] == "done"
    refused = client.get(f"/v1/jobs/{restored.listed['queued_outside']}").json()
    assert refused["state"] == "failed" and refused["error"]["code"] == "outside_roots", refused
    assert "running on" not in (restored.jobs / restored.listed["queued_outside"] / "log.txt").read_text()


def test_a_read_only_jobs_dir_answers_503_and_the_worker_lives_on(restored):
    client = restored.backend.client()
    bundle = write_bundle(restored.root / "bundles" / "b-read-only")
    running = client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": LONG}).json()
    wait_for_progress(client, running["id"])
    with read_only(restored.jobs):
        for response in (
            client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": QUICK}),
            post_tar(restored.backend, tar_of({"bundle.json": (bundle / "bundle.json").read_bytes()})),
        ):
            error = assert_field(response, 503, "data_dir")
            assert str(restored.backend.data_dir) in error["message"] and "--data-dir" in error["message"], error
        client.post(f"/v1/jobs/{running['id']}/cancel")
        assert wait_for(client, running["id"], {"cancelled", "failed", "done"})["state"] == "cancelled"
    after = client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": QUICK}).json()
    assert wait_for(client, after["id"], {"done", "failed"})["state"] == "done"


def test_a_read_only_data_dir_is_a_clear_error_at_start(tmp_path):
    """``serve`` on a read-only data dir exits with code 3 and says what to do (it raised
    a traceback from chmod); a store whose jobs/ alone is read-only says so too."""
    data = tmp_path / "data"
    data.mkdir()
    with private_mount(data), read_only(data):
        command = [sys.executable, "-m", "poe_backend", "serve", "--port", "9", "--data-dir", str(data), "--devices", "cpu"]
        finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
        with pytest.raises(DataDirUnwritable, match="--data-dir") as raised:
            JobStore(data)
    assert finished.returncode == 3, finished.stderr
    assert str(data) in finished.stderr and "--data-dir" in finished.stderr and "Traceback" not in finished.stderr
    assert str(data / "jobs") in str(raised.value)


class HoldTask(Task):
    """Reports no progress and waits (at most 30 s; the store's stop ends it sooner)."""

    name = "test_hold"

    def run(self, context: TaskContext) -> TaskResult:
        time.sleep(30)
        return TaskResult("points", "none", {}, {})


def test_a_running_jobs_state_file_is_not_rewritten_while_its_progress_stands(tmp_path, monkeypatch):
    monkeypatch.setitem(TASK_CLASSES, HoldTask.name, f"{__name__}:HoldTask")
    monkeypatch.setattr(jobs_module, "PERSIST_INTERVAL_S", 0.05)
    store = JobStore(tmp_path / "data")
    store.start()
    try:
        job = Job(id=new_job_id(), task=HoldTask.name, bundle_dir=str(write_bundle(tmp_path / "bundle")), params={}, models="tiny", bundle={})
        store.submit(job)
        state_file = store.job_dir(job.id) / "state.json"
        deadline = time.monotonic() + 10
        while json.loads(state_file.read_text())["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        written = os.stat(state_file).st_ino
        time.sleep(0.3)  # six intervals without progress
        assert os.stat(state_file).st_ino == written and store.get(job.id)["state"] == "running"
    finally:
        store.stop()

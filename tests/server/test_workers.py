"""Job processes: one per device, each with its own model cache; a crashed one fails its
job, not the server. In-process JobStore with two CPU workers and small test tasks (the
job processes import them by the ``module:Class`` path the store sends)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from poe_backend.models import lookup
from poe_backend.runtime.cache import MODEL_CACHE
from poe_backend.server.jobs import Job, JobStore, new_job_id
from poe_backend.tasks import TASK_CLASSES
from poe_backend.tasks.base import RESULT_FILE, Task, TaskContext, TaskParams, TaskResult
from tests.server.conftest import QUICK, write_bundle

ROLES = ("flux.transformer.dev", "flux.transformer.depth")


class HoldParams(TaskParams):
    role: str
    hold_until: str


class LoadAndHoldTask(Task):
    """Loads ``role`` (tiny preset), marks ``loaded`` in its outputs, then waits (at most
    60 s) until the file ``hold_until`` exists, so two such jobs overlap."""

    name = "test_load_and_hold"
    Params = HoldParams

    def model_roles(self, context: TaskContext) -> list[str]:
        return [context.params.role]

    def run(self, context: TaskContext) -> TaskResult:
        MODEL_CACHE.load(context.params.role, context.models)
        (context.out_dir / "loaded").touch()
        deadline = time.monotonic() + 60
        while not Path(context.params.hold_until).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return TaskResult("points", "none", {}, {"pid": os.getpid()})


class CrashTask(Task):
    """Dies the way the OOM killer ends a process."""

    name = "test_crash"

    def run(self, context: TaskContext) -> TaskResult:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")


@pytest.fixture
def two_cpu_store(tmp_path, monkeypatch):
    monkeypatch.setitem(TASK_CLASSES, LoadAndHoldTask.name, f"{__name__}:LoadAndHoldTask")
    monkeypatch.setitem(TASK_CLASSES, CrashTask.name, f"{__name__}:CrashTask")
    monkeypatch.setenv("POE_DATA_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lookup.resolve(ROLES[0], "tiny")  # build the tiny family once, before the job processes start
    store = JobStore(tmp_path / "data", devices=["cpu", "cpu"])
    store.start()
    yield store
    store.stop()


def _submit(store: JobStore, bundle: Path, task: str, params: dict) -> str:
    job = Job(id=new_job_id(), task=task, bundle_dir=str(bundle), params=params, models="tiny", bundle={})
    store.submit(job)
    return job.id


def _wait(store: JobStore, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while (job := store.get(job_id))["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


def test_two_devices_cache_their_own_models_and_never_share(two_cpu_store, tmp_path):
    """Two overlapping jobs, one per worker, each load another role: each job process
    holds its own model only (in one shared cache the second job's start would evict the
    first's model, or each would see both)."""
    bundle = write_bundle(tmp_path / "bundle")
    first_id, second_id = new_job_id(), new_job_id()
    loaded = {job_id: two_cpu_store.job_dir(job_id) / "outputs" / "loaded" for job_id in (first_id, second_id)}
    for job_id, role, other in ((first_id, ROLES[0], second_id), (second_id, ROLES[1], first_id)):
        two_cpu_store.submit(Job(id=job_id, task=LoadAndHoldTask.name, bundle_dir=str(bundle), params={"role": role, "hold_until": str(loaded[other])}, models="tiny", bundle={}))
    jobs = [_wait(two_cpu_store, job_id) for job_id in (first_id, second_id)]
    assert [job["state"] for job in jobs] == ["done", "done"], jobs
    manifests = [json.loads((two_cpu_store.job_dir(job["id"]) / "outputs" / RESULT_FILE).read_text()) for job in jobs]
    expected = [[str(lookup.resolve(role, "tiny"))] for role in ROLES]
    assert [manifest["memory"]["loaded_after"] for manifest in manifests] == expected
    assert manifests[0]["pid"] != manifests[1]["pid"] and os.getpid() not in (manifests[0]["pid"], manifests[1]["pid"])
    assert sorted(two_cpu_store.loaded_models()) == sorted(expected)


def test_a_crashed_job_process_fails_its_job_and_the_next_job_runs(two_cpu_store, tmp_path):
    bundle = write_bundle(tmp_path / "bundle")
    crashed = _wait(two_cpu_store, _submit(two_cpu_store, bundle, CrashTask.name, {}))
    assert crashed["state"] == "failed" and crashed["error"]["code"] == "worker_died" and "signal 9" in crashed["error"]["message"]
    after = [_submit(two_cpu_store, bundle, "toy2d", QUICK) for _ in range(3)]
    assert [_wait(two_cpu_store, job_id)["state"] for job_id in after] == ["done"] * 3


def test_progress_fraction_is_the_share_of_the_planned_cost():
    from poe_backend.sampling import Progress
    from poe_backend.server.worker import ProgressMeter, decode_progress, encode_progress

    meter = ProgressMeter()
    report = meter.update(Progress(level=1, num_levels=4, step=0, t=0.9, nfe=10, ess=None, planned_nfe=40))
    assert report["fraction"] == 0.25 and decode_progress(encode_progress(report))["planned_nfe"] == 40
    unplanned = ProgressMeter().update(Progress(level=2, num_levels=4, step=0, t=0.5, nfe=10, ess=None))
    assert unplanned["fraction"] == 0.5 and unplanned["planned_nfe"] is None  # counted in levels
    # work counted in network forward-equivalents when known (a conditioned child's backward, true CFG)
    weighted = ProgressMeter().update(Progress(level=1, num_levels=4, step=0, t=0.9, nfe=10, ess=None, planned_nfe=40, forwards=30, planned_forwards=60))
    assert weighted["fraction"] == 0.5 and decode_progress(encode_progress(weighted))["planned_forwards"] == 60

"""Scheduling (issue 23): free workers pull from the store's one queue, prefer the oldest
job whose models they hold within a bounded look-ahead, never starve a job, take only the
jobs they accept, and a job whose machine is lost is queued again once. The executor
boundary is the seam under test: the workers here are in-process doubles of the
:class:`~poe_backend.server.executor.Worker` protocol that run real toy2d jobs with the job
processes' own code (:func:`~poe_backend.server.worker.run_order`), attached and detached
by hand. ``/v1/health`` is read from a real server."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from poe_backend.models import lookup
from poe_backend.server.executor import NodeLost, Worker
from poe_backend.server.jobs import Job, JobStore, new_job_id, read_record
from poe_backend.server.scheduling import LOOKAHEAD, MAX_PASSED_OVER, NO_WORKER, Scheduler, model_paths
from poe_backend.server.worker import PROGRESS_FIELDS, JobOrder, JobOutcome, run_order
from poe_backend.tasks.requirements import required_roles
from tests.server.conftest import QUICK, start_backend, write_bundle

FLUX, WAN = "insertion", "sim2video"


class InProcessWorker:
    """A :class:`Worker` that runs each job in the feeding thread with the job process's
    code. ``refuse(order)`` gives its refusals; ``hold``, when given, is waited on (at most
    30 s) before each job; the next ``losses`` jobs end with :class:`NodeLost` instead of
    running. ``ran`` lists the job ids it was given, in order."""

    device = "cpu"

    def __init__(self, node: str, *, loaded: list[str] | None = None, refuse: Callable[[JobOrder], str | None] | None = None, hold: threading.Event | None = None, losses: int = 0) -> None:
        self.node, self.loaded_models, self.refuse, self.hold, self.losses = node, loaded or [], refuse, hold, losses
        self.ran: list[str] = []
        self._progress = multiprocessing.Array("d", 1 + len(PROGRESS_FIELDS))
        self._cancel_seq = multiprocessing.RawValue("q", 0)

    def start(self) -> None:
        """Nothing to start: jobs run in the caller's thread."""

    def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()

    def run(self, order: JobOrder, wait_s: float, on_wait: Callable[[], None]) -> JobOutcome:
        self.ran.append(order.job_id)
        if self.hold is not None:
            self.hold.wait(30)
        if self.losses:
            self.losses -= 1
            raise NodeLost(f"node {self.node} left the cluster")
        return run_order(order, self.device, self._progress, self._cancel_seq)

    def progress(self, seq: int) -> dict[str, Any] | None:
        return None

    def cancel(self, seq: int) -> None:
        self._cancel_seq.value = seq

    def device_memory(self) -> tuple[int | None, int | None]:
        return None, None

    def refusal(self, order: JobOrder) -> str | None:
        return None if self.refuse is None else self.refuse(order)

    def describe(self) -> dict[str, Any]:
        return {"node": self.node, "device": self.device, "memory_free": None, "memory_total": None, "loaded_models": self.loaded_models, "state": "idle"}


class HandExecutor:
    """The executor boundary, driven by the test: attaches ``workers`` at start, then
    whatever the test attaches or detaches through it."""

    def __init__(self, *workers: InProcessWorker) -> None:
        self.workers = list(workers)

    def start(self, attach: Callable[[Worker], None], detach: Callable[[Worker], None]) -> None:
        self.attach, self.detach = attach, detach
        for worker in self.workers:
            attach(worker)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


# ---- the rule, on the scheduler ----------------------------------------------------------
@pytest.fixture
def studio_preset(tmp_path, monkeypatch) -> str:
    """A JSON preset giving every role of a FLUX insertion and a Wan sim2video a local
    folder of its own (no download, no tiny build): the path to pass as ``models``."""
    monkeypatch.setenv("POE_DATA_DIR", str(tmp_path / "models"))
    roles = dict.fromkeys(required_roles(FLUX, {}) + required_roles(WAN, {}))
    overrides = {}
    for role in roles:
        (tmp_path / "weights" / role).mkdir(parents=True)
        overrides[role] = {"local_dir": str(tmp_path / "weights" / role)}
    preset = tmp_path / "studio.json"
    preset.write_text(json.dumps({"base": "default", "roles": overrides}))
    return str(preset)


def _queue(tasks: list[str], preset: str) -> tuple[Scheduler, list[str]]:
    """A scheduler holding one job per entry of ``tasks``, in that order; and their ids."""
    scheduler, ids = Scheduler(), []
    for task in tasks:
        job = Job(id=new_job_id(), task=task, bundle_dir="/bundle", params={}, models=preset, bundle={})
        scheduler.put(job, JobOrder(0, job.id, task, "", job.bundle_dir, {}, preset, "/outputs"))
        ids.append(job.id)
    return scheduler, ids


def _taken(scheduler: Scheduler, worker: InProcessWorker, count: int) -> list[str]:
    attached = scheduler.attach(worker)
    return [scheduler.take(attached).job.id for _ in range(count)]


def test_a_jobs_model_paths_are_the_keys_its_process_cache_reports(studio_preset):
    """What the scheduler compares with ``loaded_models``: the paths the model cache keys
    its components by (``str(lookup.resolve(role, preset))``), one per role."""
    roles = required_roles(FLUX, {}, studio_preset)
    assert model_paths(FLUX, {}, studio_preset) == {str(lookup.resolve(role, studio_preset)) for role in roles}
    assert model_paths("toy2d", {}, studio_preset) == frozenset() and model_paths("test_task", {}, studio_preset) == frozenset()


def test_a_free_worker_takes_the_oldest_job_whose_models_it_holds_within_the_lookahead(studio_preset):
    flux_worker = InProcessWorker("a", loaded=sorted(model_paths(FLUX, {}, studio_preset)))
    scheduler, ids = _queue([WAN, WAN, FLUX, FLUX], studio_preset)
    assert _taken(scheduler, flux_worker, 4) == [ids[2], ids[3], ids[0], ids[1]]
    scheduler, ids = _queue([WAN, FLUX], studio_preset)
    assert _taken(scheduler, InProcessWorker("fresh"), 2) == ids  # holding nothing: oldest first
    scheduler, ids = _queue([WAN] * LOOKAHEAD + [FLUX], studio_preset)
    assert _taken(scheduler, flux_worker, 1) == [ids[0]]  # the FLUX job is beyond the look-ahead


def test_a_job_passed_over_enough_times_is_taken_next(studio_preset):
    """No starvation: a worker that holds FLUX keeps taking FLUX jobs only until the older
    Wan job was passed over :data:`MAX_PASSED_OVER` times."""
    flux_worker = InProcessWorker("a", loaded=sorted(model_paths(FLUX, {}, studio_preset)))
    scheduler, ids = _queue([WAN] + [FLUX] * (MAX_PASSED_OVER + 2), studio_preset)
    assert _taken(scheduler, flux_worker, MAX_PASSED_OVER + 2) == ids[1 : MAX_PASSED_OVER + 1] + [ids[0], ids[MAX_PASSED_OVER + 1]]


# ---- the store with workers that come and go ---------------------------------------------
@pytest.fixture
def bundle(tmp_path) -> Path:
    return write_bundle(tmp_path / "bundle")


def _submit(store: JobStore, bundle: Path, params: dict[str, Any] = QUICK) -> str:
    job = Job(id=new_job_id(), task="toy2d", bundle_dir=str(bundle), params=dict(params), models="tiny", bundle={})
    store.submit(job)
    return job.id


def _wait(store: JobStore, job_id: str, states: set[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (job := store.get(job_id))["state"] not in states:
        assert time.monotonic() < deadline, job
        time.sleep(0.02)
    return job


def _store(tmp_path: Path, executor: HandExecutor) -> JobStore:
    store = JobStore(tmp_path / "data", executor=executor)
    store.start()
    return store


def test_a_worker_takes_only_jobs_it_accepts_and_a_job_none_accepts_waits_with_the_reason(tmp_path, bundle):
    def small_cards_only(order: JobOrder) -> str | None:
        return f"its plan does not fit this card ({order.params['levels']} levels)" if order.params["levels"] > QUICK["levels"] else None

    small = InProcessWorker("small", refuse=small_cards_only)
    executor = HandExecutor(small)
    store = _store(tmp_path, executor)
    try:
        big = _submit(store, bundle, {**QUICK, "levels": QUICK["levels"] + 1})
        quick = _submit(store, bundle)
        assert _wait(store, quick, {"done"})["state"] == "done"
        waiting = store.get(big)
        assert waiting["state"] == "queued" and waiting["waiting"] == f"no attached worker takes it: cpu on small: its plan does not fit this card ({QUICK['levels'] + 1} levels)"
        large = InProcessWorker("large")
        executor.attach(large)  # a worker that accepts it joins while it is queued
        assert _wait(store, big, {"done"})["waiting"] is None
        assert small.ran == [quick] and large.ran == [big]
    finally:
        store.stop()


def test_a_lost_node_requeues_its_job_once_at_its_place_and_workers_come_and_go(tmp_path, bundle):
    """Worker ``a`` is detached while it runs the first job (its ``run`` ends with
    NodeLost, as the protocol says): the job is queued again ahead of the second, waits
    while no worker is attached, and runs on ``b`` once it joins."""
    hold = threading.Event()
    first_worker = InProcessWorker("a", hold=hold, losses=1)
    executor = HandExecutor(first_worker)
    store = _store(tmp_path, executor)
    try:
        first = _submit(store, bundle)
        _wait(store, first, {"running"})
        second = _submit(store, bundle)
        executor.detach(first_worker)
        hold.set()
        requeued = _wait(store, first, {"queued"})
        assert requeued["requeued"] == 1 and requeued["waiting"] == NO_WORKER and store.workers == []
        second_worker = InProcessWorker("b")
        executor.attach(second_worker)
        assert [_wait(store, job_id, {"done"})["state"] for job_id in (first, second)] == ["done", "done"]
        assert first_worker.ran == [first] and second_worker.ran == [first, second]
        assert "node_lost: node a left the cluster; queued again at its place" in (store.job_dir(first) / "log.txt").read_text()
        assert read_record(store.job_dir(first)).requeued == 1  # persisted, and read back at a restart
    finally:
        store.stop()


def test_a_second_node_loss_fails_the_job_as_node_lost(tmp_path, bundle):
    unlucky = InProcessWorker("a", losses=2)
    store = _store(tmp_path, HandExecutor(unlucky))
    try:
        job_id = _submit(store, bundle)
        failed = _wait(store, job_id, {"failed"})
        assert failed["error"]["code"] == "node_lost" and failed["requeued"] == 1 and unlucky.ran == [job_id, job_id]
        assert read_record(store.job_dir(job_id)).error["code"] == "node_lost"
    finally:
        store.stop()


# ---- /v1/health through the real server ----------------------------------------------------
def test_health_lists_every_worker(tmp_path):
    from addon import job_view

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    backend = start_backend(data_dir, "--devices", "cpu,cpu")
    try:
        health = backend.client().get("/v1/health").json()
    finally:
        backend.stop()
    assert health["workers"] == [{"node": "local", "device": "cpu", "memory_free": None, "memory_total": None, "loaded_models": [], "state": "idle"}] * 2
    assert health["devices"] == ["cpu", "cpu"] and health["device"] == "cpu" and health["loaded_models_per_device"] == [[], []]
    assert job_view.backend_line(health, "running", backend.url) == f"backend {health['version']} running on cpu, 2 workers, at {backend.url}"

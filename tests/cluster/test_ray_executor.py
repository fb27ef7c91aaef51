"""The Ray executor (issue 23) on a cluster simulated on this machine: a head and two nodes
with one logical GPU each (their actors run torch on the CPU), under the real HTTP server.
The tests share one cluster and one server and run in file order: the last one removes
every GPU node."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from poe_backend.bundle import FINISHED_STATES
from poe_backend.models import lookup
from poe_backend.server.cli import main as serve_main
from poe_backend.server.jobs import Job, new_job_id
from poe_backend.server.ray_executor import ClusterRefused, RayExecutor, token_auth_problem, version_refusal
from poe_backend.server.ray_files import IN_USE_S, NodeFiles, TransferError, bundle_digest, file_manifest, read_chunks, write_chunk
from poe_backend.server.worker import DeviceWorker, JobOrder
from poe_backend.tasks import TASK_CLASSES
from poe_backend.tasks.base import RESULT_FILE
from tests.cluster.conftest import ROLES, ClusterBackend, SimulatedCluster
from tests.cluster.tasks import DigestTask, HoldTask
from tests.server.conftest import LONG, QUICK, start_backend, wait_for, wait_for_progress, write_bundle

pytestmark = pytest.mark.slow
FINISHED = set(FINISHED_STATES)


def submit_toy(backend: ClusterBackend, bundle: Path, params: dict[str, Any]) -> str:
    with backend.client() as client:
        response = client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": params, "models": "tiny"})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def submit_task(backend: ClusterBackend, task: str, bundle: Path, params: dict[str, Any]) -> str:
    """A job of a test task, committed to the store directly (the HTTP side knows only the
    real tasks' bundles)."""
    job = Job(id=new_job_id(), task=task, bundle_dir=str(bundle), params=params, models="tiny", bundle={})
    backend.store.submit(job)
    return job.id


def hold(backend: ClusterBackend, folder: Path, name: str, role: str | None = None, release: Path | None = None) -> tuple[str, Path, Path]:
    """Submit a :class:`HoldTask` job that holds until ``release`` exists (default: a file
    of its own); its id, its ``started`` file and its release file."""
    started, release = folder / f"{name}.started", release or folder / f"{name}.release"
    params = {"started": str(started), "hold_until": str(release), **({"role": role} if role else {})}
    return submit_task(backend, HoldTask.name, write_bundle(folder / "bundle"), params), started, release


def wait_until(check: Callable[[], Any], timeout: float = 60.0, what: str | Callable[[], str] = "condition") -> Any:
    """``check()``'s first true value; fails after ``timeout`` seconds saying ``what`` was
    awaited (a callable: evaluated then, to show the state at the time)."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what() if callable(what) else what}"
        time.sleep(0.05)
    return value


def starts(started: Path) -> int:
    """How many times a :class:`HoldTask` job has started."""
    return len(started.read_text().split()) if started.exists() else 0


def finished(backend: ClusterBackend, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    def what() -> str:
        return f"job {job_id} to finish: {backend.store.get(job_id)}, workers {[worker.describe() for worker in backend.store.workers]}"

    return wait_until(lambda: (job := backend.store.get(job_id))["state"] in FINISHED and job, timeout, what)


def worker_running(backend: ClusterBackend, job_id: str) -> Any:
    return wait_until(lambda: next((worker for worker in backend.store.workers if worker.describe()["state"] == job_id), None), 30.0, f"a worker running {job_id}")


def log_of(backend: ClusterBackend, job_id: str) -> str:
    return (backend.data_dir / "jobs" / job_id / "log.txt").read_text()


# ---- without a cluster ------------------------------------------------------------------
def test_joining_a_cluster_needs_token_authentication(monkeypatch, tmp_path, capsys):
    """Without RAY_AUTH_MODE=token and a token the executor and ``serve`` refuse to join
    (exit 2), before any connection."""
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    with pytest.raises(ClusterRefused, match="RAY_AUTH_MODE"):
        RayExecutor("127.0.0.1:6379")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert "RAY_AUTH_TOKEN" in token_auth_problem(dict(os.environ))
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("a-token\n")
    assert token_auth_problem(dict(os.environ)) is None

    monkeypatch.delenv("RAY_AUTH_MODE")
    assert serve_main(["--executor", "ray", "--ray-address", "127.0.0.1:6379", "--data-dir", str(tmp_path / "data")]) == 2
    stderr = capsys.readouterr().err
    assert "token authentication" in stderr and "RAY_AUTH_MODE" in stderr, stderr


def test_a_worker_of_another_backend_version_takes_no_jobs():
    from poe_backend import __version__
    from poe_backend.bundle import API_VERSION

    assert version_refusal("10.0.0.7/ab12cd34", {"version": __version__, "api_version": API_VERSION}) is None
    refusal = version_refusal("10.0.0.7/ab12cd34", {"version": "0.0.1", "api_version": API_VERSION + 1})
    assert "10.0.0.7/ab12cd34" in refusal and "0.0.1" in refusal and __version__ in refusal and "lockfile" in refusal


def test_a_node_caches_whole_bundles_by_digest_and_evicts_the_oldest(tmp_path):
    """A bundle enters the cache only whole and as sent; beyond the bound the least
    recently used one goes, unless used within the hour; no chunk writes outside its folder."""
    node = NodeFiles(tmp_path / "node", cache_bytes=3000)
    digests = []
    for name in ("first", "second", "third"):
        source = tmp_path / name
        (source / "passes").mkdir(parents=True)
        (source / "passes" / "depth.exr").write_bytes(os.urandom(2000))
        (source / "bundle.json").write_text("{}")
        manifest = file_manifest(source)
        digest = bundle_digest(source, manifest)
        node.begin_bundle(digest)
        for relative, offset, data in read_chunks(source, manifest):
            write_chunk(node.incoming_dir(digest), relative, offset, data)
        node.commit_bundle(digest, manifest)
        assert node.has_bundle(digest) and file_manifest(node.bundle_dir(digest)) == manifest
        digests.append(digest)
        if name == "second":
            assert node.has_bundle(digests[0])  # over the bound, but used a moment ago
            os.utime(node.bundle_dir(digests[0]), (time.time() - 2 * IN_USE_S,) * 2)
    assert not node.has_bundle(digests[0]) and node.has_bundle(digests[1])  # 3 x 2002 bytes > 3000: the one unused for 2 h went

    node.begin_bundle(digests[0])
    for relative, offset, data in read_chunks(tmp_path / "first", file_manifest(tmp_path / "first")):
        write_chunk(node.incoming_dir(digests[0]), relative, offset, data[::-1])  # corrupted on the way
    with pytest.raises(TransferError, match="corrupted"):
        node.commit_bundle(digests[0], file_manifest(tmp_path / "first"))
    assert not node.has_bundle(digests[0]) and not node.incoming_dir(digests[0]).exists()
    with pytest.raises(TransferError, match="leave"):
        write_chunk(node.incoming_dir(digests[0]), "../escape", 0, b"x")


def test_serve_with_the_ray_executor_and_no_address_runs_jobs_on_a_local_ray_instance(monkeypatch, tmp_path):
    """``serve --executor ray --devices cpu``: a local Ray instance with token authentication
    (Ray makes the token in the home folder), a CPU worker listed by /v1/health, a job done."""
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "data").mkdir()
    backend = start_backend(tmp_path / "data", "--executor", "ray", "--devices", "cpu", "--allow-root", str(tmp_path), timeout=120.0)
    try:
        with backend.client() as client:
            workers = wait_until(lambda: client.get("/v1/health").json()["workers"], timeout=90.0, what="the local worker")
            assert [(worker["device"], worker["state"]) for worker in workers] == [("cpu", "idle")]
            job = client.post("/v1/jobs", json={"bundle_path": str(write_bundle(tmp_path / "bundle")), "params": QUICK}).json()
            assert wait_for(client, job["id"], FINISHED)["state"] == "done"
    finally:
        backend.stop()
    assert (tmp_path / ".ray" / "auth_token").read_text().strip()


# ---- on the simulated cluster -----------------------------------------------------------
def test_health_lists_every_worker_with_its_node(backend: ClusterBackend):
    with backend.client() as client:
        health = client.get("/v1/health").json()
    workers = health["workers"]
    assert sorted(worker["node"] for worker in workers) == sorted(worker.node for worker in backend.store.workers)
    assert len({worker["node"] for worker in workers}) == 2
    for worker in workers:
        assert worker["device"] == "cpu" and worker["state"] == "idle" and worker["memory_total"] is None and worker["loaded_models"] == []


def test_the_same_job_gives_byte_identical_outputs_on_the_local_and_the_ray_executor(backend: ClusterBackend, tmp_path):
    bundle = write_bundle(backend.bundles / "identical")
    with backend.client() as client:
        job = wait_for(client, submit_toy(backend, bundle, QUICK), FINISHED)
    assert job["state"] == "done", job
    local_out = tmp_path / "local"
    local_out.mkdir()
    local = DeviceWorker("cpu", 1)
    local.start()
    try:
        outcome = local.run(JobOrder(1, "local", "toy2d", TASK_CLASSES["toy2d"], str(bundle), job["params"], job["models"], str(local_out)), 1.0, lambda: None)
    finally:
        local.stop()
    ray_out = backend.data_dir / "jobs" / job["id"] / "outputs"
    assert outcome.state == "done" and {**outcome.outputs, RESULT_FILE: RESULT_FILE} == job["outputs"]
    for path in outcome.outputs.values():
        assert (ray_out / path).read_bytes() == (local_out / path).read_bytes(), path
    assert without_measurements(ray_out / RESULT_FILE) == without_measurements(local_out / RESULT_FILE)


def without_measurements(path: Path) -> dict[str, Any]:
    """A result.json without what differs between two runs of one job: time and memory."""
    manifest = json.loads(path.read_text())
    del manifest["stats"]["seconds"], manifest["memory"]
    return manifest


def test_two_workers_keep_separate_model_caches(backend: ClusterBackend, tmp_path):
    """Two jobs that hold until the other has started run at once, one per worker, each
    loading another role: each actor holds its own model only."""
    first, _, _ = hold(backend, tmp_path, "first", ROLES[0], release=tmp_path / "second.started")
    second, _, _ = hold(backend, tmp_path, "second", ROLES[1], release=tmp_path / "first.started")
    jobs = [finished(backend, job_id) for job_id in (first, second)]
    assert [job["state"] for job in jobs] == ["done", "done"], jobs
    manifests = [json.loads((backend.data_dir / "jobs" / job["id"] / "outputs" / RESULT_FILE).read_text()) for job in jobs]
    expected = [[str(lookup.resolve(role, "tiny"))] for role in ROLES]
    assert [manifest["memory"]["loaded_after"] for manifest in manifests] == expected
    assert manifests[0]["pid"] != manifests[1]["pid"] and os.getpid() not in (manifests[0]["pid"], manifests[1]["pid"])
    with backend.client() as client:
        listed = client.get("/v1/health").json()["workers"]
    assert sorted(worker["loaded_models"] for worker in listed) == sorted(expected)


def test_cancel_stops_a_job_at_its_next_step_and_the_worker_keeps_its_models(backend: ClusterBackend, tmp_path):
    held, started, _ = hold(backend, tmp_path, "held", ROLES[0])
    wait_until(lambda: starts(started) == 1, what="the held job to start")
    worker = worker_running(backend, held)
    pid = worker.pid
    with backend.client() as client:
        asked = time.monotonic()
        client.post(f"/v1/jobs/{held}/cancel")
        job = wait_for(client, held, FINISHED)
        assert job["state"] == "cancelled" and time.monotonic() - asked < 5.0, job
        assert worker.pid == pid and str(lookup.resolve(ROLES[0], "tiny")) in worker.loaded_models

        sampling = submit_toy(backend, write_bundle(backend.bundles / "long"), LONG)
        running = wait_for_progress(client, sampling)  # progress read from the actor
        assert 0 < running["progress"]["fraction"] < 1
        asked = time.monotonic()
        client.post(f"/v1/jobs/{sampling}/cancel")
        job = wait_for(client, sampling, FINISHED)
    assert job["state"] == "cancelled" and job["error"]["code"] == "cancelled" and time.monotonic() - asked < 5.0, job


def test_a_killed_actor_fails_its_job_as_worker_died_and_the_next_jobs_run(backend: ClusterBackend, tmp_path):
    bundle = write_bundle(backend.bundles / "killed")
    with backend.client() as client:
        killed = submit_toy(backend, bundle, LONG)
        wait_for_progress(client, killed)
        worker = worker_running(backend, killed)
        pid = worker.pid
        os.kill(pid, signal.SIGKILL)  # as the OOM killer would
        job = wait_for(client, killed, FINISHED)
        assert job["state"] == "failed" and job["error"]["code"] == "worker_died" and worker.node in job["error"]["message"], job
        after = [submit_toy(backend, bundle, QUICK) for _ in range(3)]
        assert [wait_for(client, job_id, FINISHED)["state"] for job_id in after] == ["done"] * 3
    assert worker in backend.store.workers and worker.pid not in (None, pid)


def test_a_100_mb_bundle_arrives_intact_and_is_sent_once_per_node(backend: ClusterBackend, tmp_path):
    """With one worker held busy, both jobs run on the other one: the first sends the
    bundle to its node, the second finds it there."""
    busy, started, release = hold(backend, tmp_path, "busy")
    wait_until(lambda: starts(started) == 1, what="the busy job to start")
    bundle = write_bundle(backend.bundles / "big")
    blob = os.urandom(100 << 20)
    (bundle / "blob.bin").write_bytes(blob)
    try:
        first = finished(backend, submit_task(backend, DigestTask.name, bundle, {"file": "blob.bin"}))
        second = finished(backend, submit_task(backend, DigestTask.name, bundle, {"file": "blob.bin"}))
    finally:
        release.touch()
    for job in (first, second):
        assert job["state"] == "done", job
        assert (backend.data_dir / "jobs" / job["id"] / "outputs" / "digest.txt").read_text() == hashlib.sha256(blob).hexdigest()
    assert "sent to" in log_of(backend, first["id"]) and "100.0 MiB" in log_of(backend, first["id"])
    assert "already cached on" in log_of(backend, second["id"]) and "sent to" not in log_of(backend, second["id"])
    assert finished(backend, busy)["state"] == "done"


def test_a_node_lost_mid_job_requeues_it_once_and_a_second_loss_fails_it(backend: ClusterBackend, cluster: SimulatedCluster, tmp_path):
    """Runs last: it removes every GPU node. A job whose node leaves runs again on the
    other node and finishes; a job that loses its node twice fails ``node_lost``."""
    once, once_started, once_release = hold(backend, tmp_path, "once")
    wait_until(lambda: starts(once_started) == 1, what="the job to start")
    first_node = worker_running(backend, once).placement.node_id
    cluster.remove_node_of(first_node)
    wait_until(lambda: starts(once_started) == 2, what=lambda: f"the job to run again: {backend.store.get(once)}\n{log_of(backend, once)}")
    assert worker_running(backend, once).placement.node_id != first_node
    once_release.touch()
    assert finished(backend, once)["state"] == "done"
    assert "node_lost" in log_of(backend, once)

    twice, twice_started, _ = hold(backend, tmp_path, "twice")
    wait_until(lambda: starts(twice_started) == 1, what="the second job to start")
    cluster.remove_node_of(worker_running(backend, twice).placement.node_id)
    wait_until(lambda: backend.store.get(twice)["state"] == "queued", what="the second job to be queued again")
    cluster.add_gpu_node()
    wait_until(lambda: starts(twice_started) == 2, timeout=90.0, what="the second job to run on the new node")
    cluster.remove_node_of(worker_running(backend, twice).placement.node_id)
    job = finished(backend, twice)
    assert job["state"] == "failed" and job["error"]["code"] == "node_lost", job

"""A restart keeps finished jobs, marks the interrupted one failed, and runs queued ones."""

from __future__ import annotations

import signal
import subprocess
import sys

from tests.server.conftest import LONG, QUICK, free_port, start_backend, wait_for, wait_for_progress, write_bundle


def test_restart_keeps_finished_jobs_and_marks_interrupted_ones(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    first = start_backend(data_dir)
    try:
        client = first.client()
        bundle = write_bundle(data_dir / "bundle")
        finished = client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": QUICK}).json()
        wait_for(client, finished["id"], {"done"})
        interrupted = client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": LONG}).json()
        queued = client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": QUICK}).json()
        wait_for_progress(client, interrupted["id"])
        token = first.token
    finally:
        first.stop(signal.SIGKILL)  # a crash: nothing gets to clean up

    second = start_backend(data_dir)
    try:
        client = second.client()
        assert second.token == token
        listed = {job["id"]: job for job in client.get("/v1/jobs").json()["jobs"]}
        assert listed[finished["id"]]["state"] == "done"
        assert client.get(f"/v1/jobs/{finished['id']}/outputs/image").content.startswith(b"\x89PNG")
        failed = listed[interrupted["id"]]
        assert failed["state"] == "failed" and failed["error"]["code"] == "interrupted" and "restart" in failed["error"]["message"]
        assert wait_for(client, queued["id"], {"done", "failed"})["state"] == "done"
    finally:
        second.stop()
    log = (data_dir / "jobs" / interrupted["id"] / "log.txt").read_text()
    assert "interrupted" in log


def test_a_second_server_neither_loses_nor_reruns_jobs(tmp_path):
    """Jobs queued on server A while B is attempted on the same data dir: B exits, then A is
    killed and C restarts: every job ran once (log 'running on' once) and none is lost."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    first = start_backend(data_dir)
    try:
        client = first.client()
        bundle = write_bundle(data_dir / "bundle")
        ids = [client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": QUICK}).json()["id"] for _ in range(4)]
        second = subprocess.run([sys.executable, "-m", "poe_backend", "serve", "--port", str(free_port()), "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=60)
        assert second.returncode == 3
        for job_id in ids:
            assert wait_for(client, job_id, {"done", "failed"})["state"] == "done"
    finally:
        first.stop(signal.SIGKILL)
    third = start_backend(data_dir)
    try:
        listed = {job["id"]: job["state"] for job in third.client().get("/v1/jobs").json()["jobs"]}
        assert {job_id: listed.get(job_id) for job_id in ids} == dict.fromkeys(ids, "done")
    finally:
        third.stop()
    runs = [(data_dir / "jobs" / job_id / "log.txt").read_text().count("running on") for job_id in ids]
    assert runs == [1, 1, 1, 1]

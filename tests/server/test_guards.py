"""The service's guards on a real backend: Host allow-list, docs off, 401 bodies without
paths, paginated short listings, DELETE, the models allow-list, the data-dir lock, the
token file, orphans, retention and two CPU workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.server.conftest import LONG, QUICK, free_port, start_backend, wait_for, wait_for_progress, write_bundle


def test_a_foreign_host_header_is_refused_even_for_health(backend):
    assert httpx.get(f"{backend.url}/v1/health", headers={"host": "evil.example:80"}).status_code == 421
    assert httpx.get(f"{backend.url}/v1/health", headers={"host": "localhost"}).status_code == 200


def test_docs_are_off_and_401_names_no_path(backend):
    for route in ("/docs", "/openapi.json", "/redoc"):
        assert backend.client().get(route).status_code == 404
    body = backend.client(token="wrong").get("/v1/jobs").text
    assert str(backend.data_dir) not in body and json.loads(body)["error"]["field"] == "authorization"


def test_listings_are_paginated_and_cut_long_prompts(backend):
    client = backend.client()
    bundle = write_bundle(backend.data_dir / "b-page", prompt="x" * 9000)
    ids = [client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": QUICK}).json()["id"] for _ in range(3)]
    total = client.get("/v1/jobs", params={"limit": 1}).json()["total"]
    pages = [client.get("/v1/jobs", params={"limit": 2, "offset": offset}).json()["jobs"] for offset in range(0, total, 2)]
    listed = [job["id"] for page in pages for job in page]
    assert all(len(page) <= 2 for page in pages) and len(listed) == total == len(set(listed)) and set(ids) <= set(listed)
    entry = next(job for page in pages for job in page if job["id"] == ids[0])
    assert len(entry["prompt"]) <= 201 and "params" not in entry
    assert client.get("/v1/jobs", params={"limit": 0}).json()["error"]["field"] == "limit"
    assert len(client.get(f"/v1/jobs/{ids[0]}").json()["bundle"]["prompt"]) == 9000


def test_a_prompt_over_the_limit_is_refused(backend):
    bundle = write_bundle(backend.data_dir / "b-huge", prompt="y" * 20_000)
    response = backend.client().post("/v1/jobs", json={"bundle_path": str(bundle), "params": QUICK})
    assert response.status_code == 400 and response.json()["error"]["field"] == "prompt"


def test_delete_removes_a_finished_job_and_refuses_an_active_one(backend):
    client = backend.client()
    bundle = write_bundle(backend.data_dir / "b-delete")
    done = client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": QUICK}).json()
    wait_for(client, done["id"], {"done"})
    running = client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": LONG}).json()
    assert client.delete(f"/v1/jobs/{running['id']}").status_code == 409
    assert client.delete(f"/v1/jobs/{done['id']}").json() == {"id": done["id"], "deleted": True}
    assert not (backend.data_dir / "jobs" / done["id"]).exists()
    assert client.get(f"/v1/jobs/{done['id']}").status_code == 404 and client.delete(f"/v1/jobs/{done['id']}").status_code == 404
    client.post(f"/v1/jobs/{running['id']}/cancel")
    wait_for(client, running["id"], {"cancelled"})


@pytest.mark.parametrize("models", ["/etc/passwd.json", "../token.json", "presets/../x", 7])
def test_models_must_be_a_preset_name(backend, models):
    bundle = write_bundle(backend.data_dir / "b-models")
    response = backend.client().post("/v1/jobs", json={"bundle_path": str(bundle), "params": QUICK, "models": models})
    assert response.status_code == 400 and response.json()["error"]["field"] == "models", response.text
    assert not any(path.name.startswith("2") for path in (backend.data_dir / "jobs").iterdir() if not (path / "state.json").exists())


def test_a_preset_local_dir_outside_the_allowed_roots_is_refused(backend, tmp_path):
    presets = backend.data_dir / "presets"
    presets.mkdir(exist_ok=True)
    (presets / "outside.json").write_text(json.dumps({"base": "tiny", "roles": {"flux.vae": {"local_dir": "/etc"}}}))
    (presets / "inside.json").write_text(json.dumps({"base": "tiny", "roles": {"flux.vae": {"local_dir": str(backend.data_dir / "models" / "vae")}}}))
    bundle = write_bundle(backend.data_dir / "b-preset")
    client = backend.client()
    refused = client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": QUICK, "models": "outside"})
    assert refused.status_code == 400 and refused.json()["error"]["field"] == "models" and "/etc" not in refused.text
    accepted = client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": QUICK, "models": "inside"}).json()
    assert accepted["models"] == str((presets / "inside.json").resolve())


def test_data_and_job_dirs_are_owner_only(backend):
    assert os.stat(backend.data_dir).st_mode & 0o777 == 0o700
    jobs = list((backend.data_dir / "jobs").iterdir())
    assert jobs and all(os.stat(job).st_mode & 0o777 == 0o700 for job in jobs)


def test_a_second_server_on_the_data_dir_exits_naming_the_first(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    first = start_backend(data_dir)
    try:
        port = first.url.rsplit(":", 1)[1]
        result = subprocess.run([sys.executable, "-m", "poe_backend", "serve", "--port", str(free_port()), "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 3 and f"pid {first.process.pid}" in result.stderr and f"port {port}" in result.stderr
    finally:
        first.stop()


def test_a_symlinked_or_readable_token_is_refused(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("not a token\n")
    victim.chmod(0o644)
    (data_dir / "token").symlink_to(victim)
    serve = [sys.executable, "-m", "poe_backend", "serve", "--port", str(free_port()), "--data-dir", str(data_dir)]
    result = subprocess.run(serve, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3 and "symlink" in result.stderr and "rm " in result.stderr
    assert victim.stat().st_mode & 0o777 == 0o644 and victim.read_text() == "not a token\n"
    (data_dir / "token").unlink()
    (data_dir / "token").write_text("abc\n")
    (data_dir / "token").chmod(0o644)
    result = subprocess.run(serve, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3 and "chmod 600" in result.stderr


def test_kill_mid_submission_leaves_no_orphan_after_restart(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    orphan = data_dir / "jobs" / "20260101-000000-abcdef"
    (orphan / "bundle").mkdir(parents=True)
    (orphan / "bundle" / "big.bin").write_bytes(b"\0" * 4096)  # what kill -9 mid-upload leaves
    backend = start_backend(data_dir)
    try:
        assert not orphan.exists()
    finally:
        backend.stop(signal.SIGKILL)


def test_retention_keeps_the_newest_finished_jobs(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    backend = start_backend(data_dir, "--keep-jobs", "2")
    try:
        client = backend.client()
        bundle = write_bundle(data_dir / "bundle")
        ids = []
        for _ in range(4):
            ids.append(client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": QUICK}).json()["id"])
            wait_for(client, ids[-1], {"done"})
        deadline = time.monotonic() + 10
        while client.get("/v1/jobs").json()["total"] > 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [job["id"] for job in client.get("/v1/jobs").json()["jobs"]] == ids[2:]
        assert not (data_dir / "jobs" / ids[0]).exists() and (data_dir / "jobs" / ids[3]).exists()
    finally:
        backend.stop()


def test_two_cpu_workers_run_two_jobs_at_once(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    backend = start_backend(data_dir, "--devices", "cpu,cpu")
    try:
        client = backend.client()
        assert client.get("/v1/health").json()["devices"] == ["cpu", "cpu"]
        bundle = write_bundle(data_dir / "bundle")
        jobs = [client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": LONG}).json() for _ in range(3)]
        for job in jobs[:2]:
            wait_for_progress(client, job["id"])
        assert client.get(f"/v1/jobs/{jobs[2]['id']}").json()["state"] == "queued"
        for job in jobs:
            client.post(f"/v1/jobs/{job['id']}/cancel")
        assert {wait_for(client, job["id"], {"cancelled"})["state"] for job in jobs} == {"cancelled"}
    finally:
        backend.stop()

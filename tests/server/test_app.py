"""The real backend on a loopback port: auth, schemas, jobs, progress, cancel, concurrency."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import threading
import time

import pytest

from tests.server.conftest import LONG, QUICK, tar_of, wait_for, wait_for_progress, write_bundle


def test_health_needs_no_token_and_reports_the_device(backend):
    health = backend.client(token="").get("/v1/health").json()
    assert health["status"] == "ok" and health["api_version"] == 1
    assert health["device"] == "cpu" and "vram_free_bytes" in health and health["loaded_models"] == []


def test_token_file_is_private(backend):
    assert stat.S_IMODE((backend.data_dir / "token").stat().st_mode) == 0o600


@pytest.mark.parametrize("method,route", [("GET", "/v1/tasks"), ("GET", "/v1/jobs"), ("GET", "/v1/jobs/x"), ("POST", "/v1/jobs"), ("POST", "/v1/jobs/x/cancel"), ("GET", "/v1/jobs/x/outputs/image")])
def test_every_route_but_health_needs_the_token(backend, method, route):
    for token in ("", "wrong-token"):
        response = backend.client(token=token).request(method, route)
        assert response.status_code == 401, (token, response.text)
        assert response.json()["error"]["field"] == "authorization"
    assert backend.client().request(method, route).status_code != 401


def test_tasks_list_parameters_with_types_defaults_and_ranges(backend):
    tasks = {task["name"]: task for task in backend.client().get("/v1/tasks").json()["tasks"]}
    parameters = {parameter["name"]: parameter for parameter in tasks["toy2d"]["parameters"]}
    assert parameters["particles"] == {**parameters["particles"], "type": "integer", "default": 500, "minimum": 1, "maximum": 100_000}
    assert parameters["levels"]["type"] == "integer|null" and (parameters["levels"]["minimum"], parameters["levels"]["maximum"]) == (2, 10_000)
    assert tasks["toy2d"]["kind"] == "image" and "properties" in tasks["toy2d"]["schema"]
    # video tasks say the rate their clip is sampled and written at (the model's native one)
    assert (tasks["sim2video"]["fps"], tasks["sim2video_ar"]["fps"], tasks["toy2d"]["fps"]) == (16.0, 30.0, None)


def test_refuses_a_non_loopback_bind_without_allow_remote(tmp_path):
    result = subprocess.run([sys.executable, "-m", "poe_backend", "serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--allow-remote" in result.stderr


def test_a_job_runs_to_done_with_monotonic_progress(backend):
    client = backend.client()
    bundle = write_bundle(backend.data_dir / "b-monotonic")
    job = client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": {**QUICK, "levels": 40}}).json()
    assert job["state"] == "queued" and job["bundle"]["prompt"] == "two blobs"
    seen = []
    while job["state"] in ("queued", "running"):
        job = client.get(f"/v1/jobs/{job['id']}").json()
        if job["progress"]:
            seen.append(job["progress"])
        time.sleep(0.01)
    assert job["state"] == "done", job
    keys = [(p["level"], p["step"]) for p in seen]
    assert keys == sorted(keys) and [p["nfe"] for p in seen] == sorted(p["nfe"] for p in seen)
    assert [p["fraction"] for p in seen] == sorted(p["fraction"] for p in seen)
    assert job["progress"]["fraction"] == 1.0 and job["progress"]["eta_s"] == 0.0
    assert {"image", "samples", "result.json"} <= set(job["outputs"]) and job["primary"] == "image"
    image = client.get(f"/v1/jobs/{job['id']}/outputs/image")
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    manifest = client.get(f"/v1/jobs/{job['id']}/outputs/result.json").json()
    assert manifest["task"] == "toy2d" and manifest["params"]["levels"] == 40
    assert client.get(f"/v1/jobs/{job['id']}/outputs/nope").status_code == 404
    assert job["id"] in [listed["id"] for listed in client.get("/v1/jobs").json()["jobs"]]


def _next_step(progress: dict) -> set[tuple[int, int]]:
    return {(progress["level"], progress["step"]), (progress["level"], progress["step"] + 1), (progress["level"] + 1, 0)}


def test_cancel_stops_a_running_job_within_one_sampler_step(backend):
    client = backend.client()
    bundle = write_bundle(backend.data_dir / "b-cancel")
    job = client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": LONG}).json()
    wait_for_progress(client, job["id"])
    at_cancel = client.post(f"/v1/jobs/{job['id']}/cancel").json()["progress"]
    final = wait_for(client, job["id"], {"cancelled", "failed", "done"}, timeout=30)
    assert final["state"] == "cancelled" and final["error"]["code"] == "cancelled"
    assert (final["progress"]["level"], final["progress"]["step"]) in _next_step(at_cancel)


def test_cancel_a_queued_job_and_an_unknown_one(backend):
    client = backend.client()
    bundle = write_bundle(backend.data_dir / "b-queued")
    running = client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": LONG}).json()
    queued = client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": QUICK}).json()
    assert client.post(f"/v1/jobs/{queued['id']}/cancel").json()["state"] == "cancelled"
    client.post(f"/v1/jobs/{running['id']}/cancel")
    wait_for(client, running["id"], {"cancelled"})
    assert client.post("/v1/jobs/nope/cancel").status_code == 404


def _bundle_bytes(**overrides) -> bytes:
    data = {"schema": "poe-bundle/1", "task": "toy2d", "seed": 1, "width": 64, "height": 48, "frames": [1], "passes": {}}
    return json.dumps({**data, **overrides}).encode()


def test_two_clients_submitting_at_once_both_get_their_results(backend):
    bundle = write_bundle(backend.data_dir / "b-two", seed=5)
    answers = {}

    def by_path():
        answers["path"] = backend.client().post("/v1/jobs", json={"bundle_path": str(bundle), "params": QUICK}).json()

    def by_upload():
        params = {"task": "toy2d", "params": json.dumps({**QUICK, "seed": 9})}
        body = tar_of({"bundle.json": _bundle_bytes()})
        answers["upload"] = backend.client().post("/v1/jobs", params=params, content=body, headers={"content-type": "application/x-tar"}).json()

    threads = [threading.Thread(target=by_path), threading.Thread(target=by_upload)]
    [thread.start() for thread in threads]
    [thread.join() for thread in threads]
    client = backend.client()
    done = {name: wait_for(client, job["id"], {"done", "failed", "cancelled"}) for name, job in answers.items()}
    assert {job["state"] for job in done.values()} == {"done"}, done
    assert done["path"]["id"] != done["upload"]["id"] and done["upload"]["params"]["seed"] == 9
    for job in done.values():
        assert client.get(f"/v1/jobs/{job['id']}/outputs/image").content.startswith(b"\x89PNG")

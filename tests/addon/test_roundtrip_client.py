"""addon/client.py against the real backend: readable errors, path and upload submits,
downloads. No bpy needed."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from addon.client import AuthError, BackendError, BackendNotRunning, Client, VersionMismatch, is_local_url
from tests.addon.roundtrip_fixtures import backend_fixture  # noqa: F401 - the backend fixture
from tests.server.conftest import QUICK, free_port, write_bundle


def test_backend_not_running_names_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BackendNotRunning, match=f"{url} is not reachable.*Start local backend"):
        Client(url, "token", timeout=2).health()


def test_wrong_token_is_an_auth_error(backend):
    with pytest.raises(AuthError, match="refused the token.*wrong token"):
        Client(backend.url, "wrong").tasks()
    with pytest.raises(AuthError, match="missing bearer token"):
        Client(backend.url, "").jobs()


def test_version_mismatch_is_explained():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"status": "ok", "version": "9.0", "api_version": 99}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        with pytest.raises(VersionMismatch, match="API 99.*this add-on speaks API 1"):
            Client(f"http://127.0.0.1:{server.server_port}").health()
    finally:
        server.server_close()


def test_server_messages_pass_through_with_the_field(backend, tmp_path):
    client = Client(backend.url, backend.token)
    bundle = write_bundle(backend.data_dir / "c-bad")
    with pytest.raises(BackendError) as caught:
        client.submit(bundle, params={"particles": -3})
    assert caught.value.field == "params.particles" and caught.value.status == 400 and "params.particles" in caught.value.message


def test_submit_by_path_falls_back_to_upload_and_downloads(backend, tmp_path):
    client = Client(backend.url, backend.token)
    assert is_local_url(backend.url) and not is_local_url("http://gpu-box:7860")
    assert is_local_url("http://localhost:7860") and is_local_url("http://127.0.0.2:1") and is_local_url("http://[::1]:7860")
    assert not is_local_url("http://127.evil.example:7860") and not is_local_url("http://127.0.0.1.nip.io/") and not is_local_url("http://[::2]:1")
    outside = write_bundle(tmp_path / "outside-the-roots" / "deeper")
    (outside / "rgb").mkdir()
    (outside / "rgb" / "notes with spaces.txt").write_text("carried along")
    job = client.submit(outside, params=QUICK)  # refused by path (outside roots) -> uploaded
    assert job["bundle_dir"].startswith(str(backend.data_dir))
    uploaded = backend.data_dir / "jobs" / job["id"] / "bundle"
    assert (uploaded / "rgb" / "notes with spaces.txt").read_text() == "carried along"
    inside = write_bundle(backend.data_dir / "c-inside")
    by_path = client.submit(inside, params=QUICK)
    assert by_path["bundle_dir"] == str(inside)
    import time

    for job_id in (job["id"], by_path["id"]):
        while (record := client.job(job_id))["state"] in ("queued", "running"):
            time.sleep(0.05)
        assert record["state"] == "done"
        paths = client.download_outputs(record, tmp_path / job_id)
        assert paths["image"].read_bytes().startswith(b"\x89PNG") and json.loads(paths["result.json"].read_text())["task"] == "toy2d"
    with pytest.raises(BackendError, match="no output"):
        client.download(job_id, "missing", tmp_path / "x")

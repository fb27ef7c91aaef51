"""addon/client.py against the real backend: readable errors, path and upload submits,
downloads. No bpy needed."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from addon import client as client_module
from addon.client import AuthError, BackendError, BackendNotRunning, Client, VersionMismatch, is_local_url
from tests.addon.roundtrip_fixtures import backend_fixture  # noqa: F401 - the backend fixture
from tests.server.conftest import QUICK, free_port, write_bundle


def _answering(payload: object, seen: list | None = None) -> type[BaseHTTPRequestHandler]:
    """A fake backend's handler answering every GET with ``payload`` as JSON (200), noting
    each request's ``Authorization`` header in ``seen``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if seen is not None:
                seen.append(self.headers.get("Authorization"))
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


def _serve(handler: type[BaseHTTPRequestHandler], requests: int = 1) -> HTTPServer:
    """A fake backend on 127.0.0.1 answering ``requests`` requests with ``handler``."""
    server = HTTPServer(("127.0.0.1", 0), handler)

    def serve() -> None:
        for _ in range(requests):
            server.handle_request()

    threading.Thread(target=serve, daemon=True).start()
    return server


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
    server = _serve(_answering({"status": "ok", "version": "9.0", "api_version": 99}))
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


def test_redirects_are_refused_and_the_token_stays_home():
    """A 307 to another origin: urllib would resend the bearer token there and take that
    server's answer as the job. The client refuses the redirect; the other server sees
    nothing."""
    seen = []
    elsewhere = _serve(_answering({"id": "evil", "state": "done"}, seen))

    class Redirecting(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(307)
            self.send_header("Location", f"http://127.0.0.1:{elsewhere.server_port}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = _serve(Redirecting)
    try:
        with pytest.raises(BackendError, match="redirect"):
            Client(f"http://127.0.0.1:{server.server_port}", "secret-token").job("abc")
        assert seen == []
    finally:
        server.server_close()
        elsewhere.server_close()


def test_a_json_answer_larger_than_the_cap_is_refused_unread(monkeypatch):
    """The client reads at most MAX_JSON_BYTES of a JSON answer (a hostile backend's 300 MiB
    answer took Blender from 24 to 624 MB)."""
    monkeypatch.setattr(client_module, "MAX_JSON_BYTES", 1000)

    server = _serve(_answering({"jobs": ["x" * 100] * 100}))
    try:
        with pytest.raises(BackendError, match="larger than"):
            Client(f"http://127.0.0.1:{server.server_port}").jobs()
    finally:
        server.server_close()


@pytest.mark.parametrize("job_id", ["../escape", "/tmp/victim", "20260101-000000-abcdef/../../x", 7])
def test_job_ids_from_the_backend_must_have_its_format(tmp_path, job_id):
    """A job id becomes a folder under the results folder: ``../escape`` wrote result.json
    outside it, an absolute id (with a chosen output_dir) deleted a user's file. Only the
    backend's own format is taken, before anything is written."""
    from addon.jobs import JobTracker

    record = {"id": job_id, "state": "done", "outputs": {"result.json": "result.json"}, "output_dir": str(tmp_path / "user")}
    tracker = JobTracker(Client("http://127.0.0.1:9"), tmp_path / "results")
    with pytest.raises(BackendError, match="not a job id"):
        tracker.fetch_result(record)
    with pytest.raises(BackendError, match="not a job id"):
        Client("http://127.0.0.1:9").download_outputs(record, tmp_path / "out")
    assert not (tmp_path / "results").exists() and not (tmp_path / "out").exists()


def test_a_local_output_dir_must_be_the_jobs_outputs_folder(tmp_path):
    """``output_dir`` pointing at a user's folder is not read in place (the outputs are
    downloaded into the results folder instead), nor is a ``<id>/outputs`` folder whose
    listed file links out of it."""
    from poe_backend.server.jobs import new_job_id

    job_id = new_job_id()
    assert client_module.JOB_ID.fullmatch(job_id)  # the client's pattern is the backend's format
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    client = Client("http://127.0.0.1:9")
    assert client.local_output_dir({"id": job_id, "output_dir": str(user), "outputs": {"notes": "notes.txt"}}) is None  # downloaded instead
    outputs = tmp_path / "jobs" / job_id / "outputs"
    outputs.mkdir(parents=True)
    (outputs / "image.png").write_bytes(b"png")
    (outputs / "notes.txt").symlink_to(user / "notes.txt")
    assert client.local_output_dir({"id": job_id, "output_dir": str(outputs), "outputs": {"image": "image.png"}}) == outputs
    assert client.local_output_dir({"id": job_id, "output_dir": str(outputs), "outputs": {"notes": "notes.txt"}}) is None


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_a_backend_that_drips_is_cut_off_at_the_total_deadline(phase):
    """One byte every 0.3 s keeps each socket wait short, so a per-wait timeout never fires
    (the old client stayed blocked for as long as the server dripped: Generate hung
    Blender's UI). The whole request now has a deadline: 1.5 s here."""
    import time

    class Dripping(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"jobs": []}).encode() + b" " * 200
            head = f"HTTP/1.1 200 OK\\r\\nContent-Length: {len(body)}\\r\\n\\r\\n".encode()
            slow, fast = (head, b"") if phase == "headers" else (b"", head)
            self.wfile.write(fast)
            self.wfile.flush()
            try:
                for byte in (slow or body):
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.3)
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = _serve(Dripping)
    started = time.monotonic()
    try:
        with pytest.raises(BackendError, match="did not answer within 1.5 s"):
            Client(f"http://127.0.0.1:{server.server_port}", timeout=1.5).jobs()
        assert time.monotonic() - started < 4.0
    finally:
        server.server_close()

"""Fixtures: the real backend as a subprocess on a free loopback port, and bundle makers."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import OpenEXR
import pytest

REPO = Path(__file__).resolve().parents[2]
#: A small toy2d job (~0.3 s) and a long one (minutes; tests cancel or kill it).
QUICK = {"particles": 32, "levels": 6, "langevin_steps": 1}
LONG = {"particles": 32, "levels": 5000, "langevin_steps": 2}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Backend:
    url: str
    data_dir: Path
    process: subprocess.Popen

    @property
    def token(self) -> str:
        return (self.data_dir / "token").read_text().strip()

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token if token is None else token}"} if token != "" else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
            self.process.wait(timeout=30)


def start_backend(data_dir: Path, *extra: str, timeout: float = 60.0, preexec_fn: Callable[[], None] | None = None) -> Backend:
    """``poe-backend serve`` with ``extra`` options; ``preexec_fn`` runs in the child
    before it starts (e.g. to lower its resource limits)."""
    port = free_port()
    command = [sys.executable, "-m", "poe_backend", "serve", "--port", str(port), "--data-dir", str(data_dir), *extra]
    log = open(data_dir.parent / f"backend-{port}.log", "wb")
    process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec_fn)
    backend = Backend(f"http://127.0.0.1:{port}", data_dir, process)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"backend exited: {(data_dir.parent / f'backend-{port}.log').read_text()}")
        try:
            if httpx.get(f"{backend.url}/v1/health", timeout=1.0).status_code == 200:
                return backend
        except httpx.TransportError:
            time.sleep(0.1)
    backend.stop(signal.SIGKILL)
    raise RuntimeError("backend did not start")


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("backend")
    (root / "data").mkdir()
    (root / "bundles").mkdir()
    running = start_backend(root / "data", "--allow-root", str(root / "bundles"), "--max-upload-mb", "16")
    yield running
    running.stop()


def write_bundle(directory: Path, **overrides: Any) -> Path:
    """A toy2d bundle.json in ``directory`` (no passes); ``overrides`` replace fields."""
    directory.mkdir(parents=True, exist_ok=True)
    data = {"schema": "poe-bundle/1", "task": "toy2d", "prompt": "two blobs", "seed": 3, "width": 64, "height": 48, "fps": 24, "frames": [1], "passes": {}, "params": dict(QUICK)}
    data.update(overrides)
    (directory / "bundle.json").write_text(json.dumps(data))
    return directory


def wait_for(client: httpx.Client, job_id: str, states: set[str], timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {states}: {job}")


def wait_for_progress(client: httpx.Client, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] == "running" and job["progress"]:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never showed progress")


def tar_of(members: dict[str, bytes]) -> bytes:
    """An uncompressed tar holding ``members`` (name -> bytes) as regular files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def post_tar(backend: Backend, body: bytes, *, timeout: float = 30.0, **query: str) -> httpx.Response:
    """``POST /v1/jobs`` with ``body`` as a tar upload (task toy2d unless ``query`` says)."""
    with backend.client() as client:
        return client.post("/v1/jobs", params={"task": "toy2d", **query}, content=body, headers={"content-type": "application/x-tar"}, timeout=timeout)


def assert_field(response: httpx.Response, status: int, field: str) -> dict[str, Any]:
    """The response is ``status`` with an error naming ``field`` (in ``field`` and in the
    message); returns the error."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field and field in error["message"], error
    return error


def write_exr(path: Path, depth: np.ndarray) -> None:
    """``depth`` ``(H, W)`` as the channel ``Z`` of an OpenEXR file at ``path``, in its own
    pixel type (float32 for a depth pass)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    OpenEXR.File({"type": OpenEXR.scanlineimage}, {"Z": depth}).write(str(path))


def depth_map(fill: float | None = None) -> np.ndarray:
    """48x64 camera Z: 2.0 with a +inf (background) band, and ``fill`` in one 4x4 corner."""
    depth = np.full((48, 64), 2.0, np.float32)
    depth[:, 40:] = np.inf
    if fill is not None:
        depth[:4, :4] = fill
    return depth

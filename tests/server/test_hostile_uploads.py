"""Hostile and careless uploads against a real backend on 127.0.0.1: stalled bodies, a gzip
bomb, a flood of empty entries, an EXR header that looped the old parser, files that are
not what their pass says, depth with impossible values, pass files that link out of the
allowed roots, and bundle paths that are not strings.

The backend here runs with small limits (16 MiB, 1000 entries, a 2 s read timeout) so
that each limit is reached in well under a second; the defaults are in
:class:`poe_backend.server.uploads.UploadLimits`.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.server.conftest import QUICK, REPO, Backend, assert_field, depth_map, free_port, post_tar, tar_of, wait_for, write_bundle, write_exr

LIMIT_MIB, MAX_ENTRIES, READ_TIMEOUT_S = 16, 1000, 2.0
SERVE = """
import sys
from pathlib import Path
import uvicorn
from poe_backend.server.app import ServerConfig, create_app
from poe_backend.server.auth import load_or_create_token
data_dir, port, root, limit_mib, entries, timeout = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), *map(float, sys.argv[4:])
config = ServerConfig(
    data_dir=data_dir, token=load_or_create_token(data_dir), allowed_roots=[root],
    max_upload_bytes=int(limit_mib) << 20, max_upload_entries=int(entries), upload_read_timeout_s=timeout,
)
uvicorn.run(create_app(config), host="127.0.0.1", port=port, log_level="warning")
"""


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory):
    """The real app under uvicorn in its own process, with this file's small limits."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "data").mkdir()
    (root / "bundles").mkdir()
    port = free_port()
    command = [sys.executable, "-c", SERVE, str(root / "data"), str(port), str(root / "bundles"), str(LIMIT_MIB), str(MAX_ENTRIES), str(READ_TIMEOUT_S)]
    with open(root / "backend.log", "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
    running = Backend(f"http://127.0.0.1:{port}", root / "data", process)
    deadline = time.monotonic() + 60
    while not _healthy(running):
        assert process.poll() is None and time.monotonic() < deadline, (root / "backend.log").read_text()
        time.sleep(0.1)
    yield running
    running.stop(signal.SIGTERM)


def _healthy(backend: Backend) -> bool:
    try:
        return httpx.get(f"{backend.url}/v1/health", timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


def _bundle_json(**overrides) -> bytes:
    data = {"schema": "poe-bundle/1", "task": "toy2d", "width": 8, "height": 8, "frames": [1], "params": QUICK, **overrides}
    return json.dumps(data).encode()


def _leftovers(data_dir: Path) -> list[Path]:
    """Job directories without a state file (an upload that was not cleaned up)."""
    jobs = data_dir / "jobs"
    return [job for job in jobs.iterdir() if not (job / "state.json").exists()] if jobs.is_dir() else []


def _wait_until_clean(data_dir: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _leftovers(data_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _leftovers(data_dir), _leftovers(data_dir)


def _stalled_upload(backend: Backend, content_type: str = "application/x-tar", body: bytes | None = None) -> socket.socket:
    """An upload that announces 10 MiB, sends ``body`` (1 KiB of a tar) and then nothing."""
    port = int(backend.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (f"POST /v1/jobs?task=toy2d HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {backend.token}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {10 << 20}\r\n\r\n")
    sock.sendall(head.encode() + (tar_of({"bundle.json": b"{}" * 2048})[:1024] if body is None else body))
    return sock


def _read_to_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (the socket's 10 s timeout bounds it)."""
    parts = []
    with sock:
        while part := sock.recv(65536):
            parts.append(part)
    return b"".join(parts)


def test_stalled_uploads_neither_hang_the_service_nor_leave_files(backend):
    """As many stalled uploads as the default executor has threads (the old extractor
    deadlocked there) while a normal upload runs to a finished job; then half the
    stalled clients leave and the rest hit the read timeout: 408, and no upload left."""
    stalled = [_stalled_upload(backend) for _ in range(min(32, (os.cpu_count() or 1) + 4))]
    time.sleep(0.3)  # let the server start receiving all of them
    started = time.monotonic()
    assert _healthy(backend)
    response = post_tar(backend, tar_of({"bundle.json": _bundle_json()}), timeout=20)
    assert response.status_code == 201, response.text
    with backend.client() as client:
        assert wait_for(client, response.json()["id"], {"done"}, timeout=30)["state"] == "done"
    assert time.monotonic() - started < READ_TIMEOUT_S + 20
    for sock in stalled[::2]:
        sock.close()
    for sock in stalled[1::2]:
        answer = _read_to_close(sock)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"field":"bundle"' in answer and b"stalled" in answer
    _wait_until_clean(backend.data_dir)


def test_a_stalled_multipart_upload_times_out_too(backend):
    part = b'--xyz\r\nContent-Disposition: form-data; name="bundle"; filename="b.tar"\r\nContent-Type: application/x-tar\r\n\r\n'
    answer = _read_to_close(_stalled_upload(backend, "multipart/form-data; boundary=xyz", part + b"\0" * 1024))
    assert answer.startswith(b"HTTP/1.1 408") and b"stalled" in answer, answer[:300]


def _gzip_bomb(member_mib: int = 1, members: int = 256) -> bytes:
    """A gzip (level 1, ~1.2 MB) of a tar of ``members`` files of ``member_mib`` MiB of
    zeros: 256 MiB once decoded, 16 times the backend's limit."""
    zeros, stream = b"\0" * (member_mib << 20), io.BytesIO()
    with gzip.GzipFile(fileobj=stream, mode="wb", compresslevel=1) as packed:
        info = tarfile.TarInfo("bundle.json")
        data = _bundle_json()
        info.size = len(data)
        packed.write(info.tobuf() + data + b"\0" * (-len(data) % 512))
        for index in range(members):
            info = tarfile.TarInfo(f"rgb/{index:04d}.png")
            info.size = len(zeros)
            packed.write(info.tobuf())
            packed.write(zeros)
        packed.write(b"\0" * 1024)
    return stream.getvalue()


def test_a_gzip_bomb_is_refused_in_under_a_second(backend):
    """Bound: under 1 s from the first byte sent to the 413 (the old stream decoder
    re-sliced a buffer of the whole decoded chunk on every read: quadratic, GBs of RAM)."""
    bomb = _gzip_bomb()
    assert len(bomb) < 2 << 20
    started = time.monotonic()
    response = post_tar(backend, bomb)
    elapsed = time.monotonic() - started
    error = assert_field(response, 413, "bundle")
    assert f"{LIMIT_MIB} MiB" in error["message"] and elapsed < 1.0, (error, elapsed)
    _wait_until_clean(backend.data_dir)


def test_a_flood_of_empty_entries_is_refused_by_the_entry_limit(backend):
    """Zero-byte files and directories count: 5000 of them in a ~30 kB gzip are refused at
    entry 1001, before the bundle is even looked at (the old extractor took no count)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        data = _bundle_json()
        info = tarfile.TarInfo("bundle.json")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
        for index in range(5000):
            archive.addfile(tarfile.TarInfo(f"e/{index}"))
    error = assert_field(post_tar(backend, buffer.getvalue()), 413, "bundle")
    assert f"more than {MAX_ENTRIES} entries" in error["message"]
    _wait_until_clean(backend.data_dir)


def _pax_header(comment: bytes = b"x") -> bytes:
    """One pax extended header block (a ``comment`` record) that applies to the next member."""
    record = b" comment=" + comment + b"\n"
    record = str(len(record) + 2).encode() + record
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, len(record)
    return info.tobuf(format=tarfile.USTAR_FORMAT) + record + b"\0" * (-len(record) % tarfile.BLOCKSIZE)


@pytest.mark.parametrize("headers,words", [
    (_pax_header() * 5000, "chains too many extended"),  # tarfile reads such a chain recursively
    (_pax_header(b"x" * (2 << 20)), "extended header larger than 1 MiB"),  # read in one piece
])
def test_hostile_extended_headers_are_a_400_not_a_crash(backend, headers, words):
    error = assert_field(post_tar(backend, headers + tar_of({"bundle.json": _bundle_json()})), 400, "bundle")
    assert words in error["message"], error
    _wait_until_clean(backend.data_dir)


def _png(path: Path, width: int = 64, height: int = 48, format: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (90, 120, 30)).save(path, format=format)


def _image_bundle(directory: Path) -> Path:
    """A toy2d bundle (any passes are allowed there) with a valid plate and depth."""
    bundle = write_bundle(directory, passes={"plate": "plate.png", "depth": "depth/####.exr"})
    _png(bundle / "plate.png")
    write_exr(bundle / "depth/0001.exr", depth_map())
    return bundle


def _post_path(backend: Backend, bundle_path: object, timeout: float = 30.0) -> httpx.Response:
    with backend.client() as client:
        return client.post("/v1/jobs", json={"bundle_path": bundle_path if not isinstance(bundle_path, Path) else str(bundle_path)}, timeout=timeout)


def test_the_exr_header_that_looped_the_old_parser_is_refused_at_once(backend):
    """16 bytes: the EXR magic, version 2, attribute 'a' of type 'b' with size -8 (the old
    hand-written reader stepped back 8 bytes forever, holding a thread per request)."""
    bundle = _image_bundle(backend.data_dir.parent / "bundles" / "looping-exr")
    (bundle / "depth/0001.exr").write_bytes(struct.pack("<ii", 20000630, 2) + b"a\0b\0" + struct.pack("<i", -8))
    started = time.monotonic()
    error = assert_field(_post_path(backend, bundle, timeout=10), 400, "passes.depth")
    assert "OpenEXR" in error["message"] and time.monotonic() - started < 5
    assert _healthy(backend)


@pytest.mark.parametrize("spoil,field,words", [
    (lambda bundle: _png(bundle / "plate.png", format="JPEG"), "passes.plate", "must be a PNG, but it is JPEG"),
    (lambda bundle: (bundle / "plate.png").write_bytes(b"not an image at all"), "passes.plate", "not a readable PNG"),
    (lambda bundle: _png(bundle / "depth/0001.exr"), "passes.depth", "not a readable OpenEXR"),
    # depth VALUES (NaN, negative, all background) fail the job that reads them:
    # tests/server/test_hostile_json.py (the server reads only the EXR's header)
])
def test_passes_must_be_what_they_say(backend, spoil, field, words):
    bundle = _image_bundle(backend.data_dir.parent / "bundles" / f"spoilt-{field}-{words[:12]}")
    assert _post_path(backend, bundle).status_code == 201
    spoil(bundle)
    error = assert_field(_post_path(backend, bundle), 400, field)
    assert words in error["message"], error


def test_pass_files_that_link_out_of_the_allowed_roots_are_refused(backend, tmp_path):
    outside = tmp_path / "outside"
    _png(outside / "secret.png")
    bundle = _image_bundle(backend.data_dir.parent / "bundles" / "links")
    _png(bundle / "shared.png")
    (bundle / "plate.png").unlink()
    (bundle / "plate.png").symlink_to(bundle / "shared.png")  # a link inside the bundle is fine
    assert _post_path(backend, bundle).status_code == 201
    (bundle / "plate.png").unlink()
    (bundle / "plate.png").symlink_to(outside / "secret.png")
    error = assert_field(_post_path(backend, bundle), 400, "passes.plate")
    assert "links outside the bundle" in error["message"]
    (bundle / "plate.png").unlink()
    _png(bundle / "plate.png")
    os.replace(bundle / "depth", outside / "depth")
    (bundle / "depth").symlink_to(outside / "depth", target_is_directory=True)  # a linked folder
    assert_field(_post_path(backend, bundle), 400, "passes.depth")


@pytest.mark.parametrize("bundle_path,words", [
    (5, "must be a string"),
    (["/tmp"], "must be a string"),
    ({"path": "/tmp"}, "must be a string"),
    (True, "must be a string"),
    ("/tmp/bundle\u0000/evil", "NUL"),
])
def test_bundle_paths_that_are_not_plain_strings(backend, bundle_path, words):
    error = assert_field(_post_path(backend, bundle_path), 400, "bundle_path")
    assert words in error["message"], error

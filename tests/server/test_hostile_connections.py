"""Connections and uploads that try to wear the server out, against a real backend on
127.0.0.1: connections that never finish a request's headers, hundreds of idle ones under a
low open-files limit, more uploads at once than allowed, an upload that trickles, and tar
member names that are not text.

The backend here runs with small limits so each rule acts in about a second: a 1 s header
deadline, two uploads at once, a minimum upload rate that applies after 1 s, and a limit
of 256 open files (about 96 connections); the defaults are in
:class:`poe_backend.server.http_protocol.ConnectionLimits` and
:class:`poe_backend.server.uploads.UploadLimits`.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import select
import socket
import tarfile
import time
from urllib.parse import urlsplit

import httpx
import pytest

from poe_backend.server import cli
from tests.server.conftest import QUICK, Backend, assert_field, post_tar, start_backend

HEADER_TIMEOUT_S, GRACE_S, MAX_UPLOADS, OPEN_FILES = 1.0, 1.0, 2, 256
#: Seconds allowed on top of a rule's own time (a loaded 2-core machine).
SLACK_S = 2.0


def _lower_open_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("connections")
    (root / "data").mkdir()
    options = ["--header-timeout-s", str(HEADER_TIMEOUT_S), "--upload-grace-s", str(GRACE_S), "--max-uploads", str(MAX_UPLOADS), "--upload-timeout-s", "30"]
    running = start_backend(root / "data", *options, "--devices", "cpu", preexec_fn=_lower_open_files)
    yield running
    running.stop()


def _connect(backend: Backend) -> socket.socket:
    address = urlsplit(backend.url)
    return socket.create_connection((address.hostname, address.port), timeout=5.0)


def _seconds_until_closed(sock: socket.socket, limit_s: float, drip: bytes = b"") -> float:
    """Seconds until the server closes ``sock``, sending ``drip`` every 0.1 s meanwhile;
    fails when it is still open after ``limit_s`` or the server answers instead."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        if select.select([sock], [], [], 0.1)[0]:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            assert not data, f"the server answered instead of closing: {data[:200]!r}"
            return time.monotonic() - start
        if drip:
            try:
                sock.sendall(drip)
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - start
    raise AssertionError(f"the connection is still open after {limit_s} s")


def _is_closed(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock`` (it sent nothing on it)."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response from ``sock``: status, headers (lower-case names), body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536) or pytest.fail(f"closed before a response: {data!r}")
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers.get("content-length", 0)):
        body += sock.recv(65536) or pytest.fail("closed in the middle of a response")
    return int(status_line.split()[1]), headers, body


def _health_request() -> bytes:
    return b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _start_upload(backend: Backend, body: bytes, sent: int) -> socket.socket:
    """A tar upload of ``body`` with its first ``sent`` bytes sent (the rest is not)."""
    sock = _connect(backend)
    head = (
        f"POST /v1/jobs?task=toy2d HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {backend.token}\r\n"
        f"Content-Type: application/x-tar\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body[:sent])
    return sock


def _bundle_json() -> bytes:
    return json.dumps({"schema": "poe-bundle/1", "task": "toy2d", "width": 8, "height": 8, "frames": [1], "params": QUICK}).encode()


def _bundle_tar(padding_bytes: int = 0) -> bytes:
    """A toy2d bundle as a tar; ``padding_bytes`` of an extra file make it longer."""
    return _tar({"bundle.json": _bundle_json(), "padding.bin": bytes(padding_bytes)})


def _tar(members: dict[str, bytes]) -> bytes:
    """A pax tar of ``members``; names go in pax ``path`` records, so they may hold any text."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo("member")
            info.size, info.pax_headers = len(data), {"path": name}
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _job_folders(backend: Backend) -> list[str]:
    return sorted(path.name for path in (backend.data_dir / "jobs").iterdir())


def _wait_for_job_folders(backend: Backend, count: int) -> list[str]:
    deadline = time.monotonic() + SLACK_S
    while len(_job_folders(backend)) != count:
        assert time.monotonic() < deadline, f"expected {count} job folders, found {_job_folders(backend)}"
        time.sleep(0.02)
    return _job_folders(backend)


def test_a_connection_that_sends_nothing_is_closed(backend: Backend) -> None:
    with _connect(backend) as sock:
        assert _seconds_until_closed(sock, HEADER_TIMEOUT_S + SLACK_S) >= HEADER_TIMEOUT_S * 0.8


def test_headers_dripped_a_byte_at_a_time_are_cut_at_the_deadline(backend: Backend) -> None:
    """The deadline is for the whole of the headers: bytes that keep coming do not renew it."""
    with _connect(backend) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: ")
        _seconds_until_closed(sock, HEADER_TIMEOUT_S + SLACK_S, drip=b"a")


def test_a_kept_alive_connection_with_half_a_header_is_closed(backend: Backend) -> None:
    """After a response the next request's headers have the same deadline (uvicorn's own
    keep-alive timer stops at the first byte); requests that come in time are served."""
    with _connect(backend) as sock:
        for _ in range(2):
            sock.sendall(_health_request())
            assert _read_response(sock)[0] == 200
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.")
        _seconds_until_closed(sock, HEADER_TIMEOUT_S + SLACK_S)


def test_many_idle_connections_do_not_stop_a_new_client(backend: Backend) -> None:
    """300 idle connections against a server allowed 256 open files: the oldest idle ones
    are closed to make room, so a new client is served at once (not refused)."""
    idle = [_connect(backend) for _ in range(300)]
    try:
        started = time.monotonic()
        assert httpx.get(f"{backend.url}/v1/health", timeout=HEADER_TIMEOUT_S + SLACK_S).status_code == 200
        assert time.monotonic() - started < HEADER_TIMEOUT_S, "served only once idle connections timed out"
        assert all(_is_closed(sock) for sock in idle[:100]), "the oldest idle connections were not the ones closed"
    finally:
        for sock in idle:
            sock.close()


def test_uploads_past_the_bound_get_503_busy_and_leave_no_job_folder(backend: Backend) -> None:
    body = _bundle_tar(padding_bytes=1 << 20)
    held = [_start_upload(backend, body, 512) for _ in range(MAX_UPLOADS)]
    try:
        folders = _wait_for_job_folders(backend, MAX_UPLOADS)
        response = post_tar(backend, _bundle_tar())
        error = assert_field(response, 503, "bundle")
        assert error["code"] == "busy" and response.headers["retry-after"].isdigit(), (error, response.headers)
        assert _job_folders(backend) == folders
        for sock in held:  # the held uploads send nothing more: the rate rule ends them
            sock.settimeout(GRACE_S + SLACK_S)
            status, _, answer = _read_response(sock)
            assert status == 408 and json.loads(answer)["error"]["code"] == "upload_too_slow", answer
    finally:
        for sock in held:
            sock.close()
    _wait_for_job_folders(backend, 0)


def test_a_trickling_upload_is_dropped_with_408(backend: Backend) -> None:
    """A byte every 0.1 s never trips the 30 s wait for the next piece; the minimum
    average rate ends it after the grace, and its job folder goes."""
    body = _bundle_tar(padding_bytes=1 << 20)
    with _start_upload(backend, body, 512) as sock:
        started, sent = time.monotonic(), 512
        while not select.select([sock], [], [], 0.1)[0]:
            assert time.monotonic() - started < GRACE_S + SLACK_S, "the trickle was not dropped"
            sock.sendall(body[sent : sent + 1])
            sent += 1
        status, _, answer = _read_response(sock)
    error = json.loads(answer)["error"]
    assert status == 408 and error["code"] == "upload_too_slow" and error["field"] == "bundle", answer
    _wait_for_job_folders(backend, 0)


NOT_TEXT = [("a\0b/bundle.json", "a\\x00b/bundle.json"), ("a\udcffb.json", "a\\udcffb.json"), ("../a\udcff", "../a\\udcff")]


@pytest.mark.parametrize(("name", "shown"), NOT_TEXT)
def test_member_names_that_are_not_text_are_a_400(backend: Backend, name: str, shown: str) -> None:
    """A NUL (the data filter's ValueError was a 500) or bytes that are not UTF-8 (kept as
    lone surrogates: accepted, or a 500 where an error named the member, since no JSON
    answer can carry them) in a pax name; the answer shows the name escaped."""
    response = post_tar(backend, _tar({"bundle.json": _bundle_json(), name: b"x"}))
    error = assert_field(response, 400, f"bundle:{shown}")
    assert error["code"] == "bad_tar", error
    assert _job_folders(backend) == []


@pytest.mark.parametrize("option", [["--upload-timeout-s", "0"], ["--upload-grace-s", "inf"], ["--upload-min-rate-kib", "-1"], ["--max-uploads", "0"], ["--header-timeout-s", "nan"]])
def test_time_and_count_options_must_be_positive(option: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(option)
    assert f"argument {option[0]}: must be" in capsys.readouterr().err

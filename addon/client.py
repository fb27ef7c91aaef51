"""HTTP client for the poe-backend service; stdlib only (urllib), no bpy.

Every failure becomes a :class:`BackendError` with a message an artist can act on:
:class:`BackendNotRunning` (nothing listens, with the URL), :class:`AuthError` (missing or
wrong token), :class:`VersionMismatch` (add-on and backend speak different API versions)
and plain :class:`BackendError` for 4xx/5xx answers, whose message is the server's own
(it names the field at fault).

Bundles go by path to a backend on this machine and as a tar stream to a remote one. The
tar is generated on the fly (headers from :class:`tarfile.TarInfo`, file bytes straight
from disk), so no temporary archive is written. Outputs come back the same way round:
hard-linked from the job's folder when the backend is on this machine, downloaded
otherwise (:meth:`Client.fetch_outputs`).

Every call waits on the network: the add-on makes them on its worker thread
(:mod:`.worker`), never in a timer callback. What comes back is not trusted: each request
has a total deadline (a backend dripping bytes is cut off), redirects are refused (the
token stays with the configured origin), JSON answers are capped, job ids must have the
backend's format before they name a folder, and outputs are read in place only from the
job's own ``<id>/outputs`` folder.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import ipaddress
import json
import os
import re
import socket
import tarfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import weakref
from pathlib import Path
from typing import Any, Iterator

from .bundle_schema import API_VERSION

READ_CHUNK = 1 << 20


class BackendError(Exception):
    """A failed call; ``field`` names the input at fault when the server said so."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.field = field


class BackendNotRunning(BackendError):
    pass


class AuthError(BackendError):
    pass


class VersionMismatch(BackendError):
    pass


def is_local_url(url: str) -> bool:
    """True when ``url`` points at this machine (the bundle can be sent by path):
    ``localhost`` or a loopback address (``127.0.0.0/8``, ``::1``); a name that only starts
    like one (``127.evil.example``) is not."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Client:
    """One backend at ``url`` (e.g. ``http://127.0.0.1:7860``) with bearer ``token``."""

    def __init__(self, url: str, token: str = "", *, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.token = token.strip()
        self.timeout = timeout

    # ---- low level ---------------------------------------------------------------------
    def _request(self, method: str, route: str, *, body: Any = None, headers: dict[str, str] | None = None, timeout: float | None = None):
        """One request to the configured origin; redirects are refused (:class:`_NoRedirect`),
        so the token never leaves for another server and no other server's answer is taken.
        ``timeout`` (default :attr:`timeout`) bounds the whole exchange, not each wait: a
        backend that drips a byte at a time is cut off when it runs out
        (:class:`_DeadlineConnection`; the response is read within the same deadline). That
        holds for plain HTTP, what the backend serves; an ``https`` URL (a proxy in front of
        it) keeps urllib's timeout per wait."""
        request = urllib.request.Request(f"{self.url}/v1{route}", data=body, method=method, headers=headers or {})
        request.deadline = _Deadline(timeout or self.timeout)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            return _OPENER.open(request, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as error:
            raise _http_error(error) from None
        except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError, http.client.HTTPException) as error:
            if request.deadline.expired:
                raise request.deadline.error(self.url) from None
            reason = getattr(error, "reason", error)
            if body is not None and isinstance(reason, (BrokenPipeError, ConnectionResetError)):
                raise BackendError(f"the backend at {self.url} closed the connection while the request was being sent ({reason}); see the backend's log") from None
            raise BackendNotRunning(f"the backend at {self.url} is not reachable ({reason}); start it (Start local backend) or check the URL in the preferences") from None

    def _json(self, method: str, route: str, payload: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        with self._request(method, route, body=body, headers=headers, **kwargs) as response:
            return _read_json(response, f"{method} {route}", self.url)

    # ---- routes ------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``GET /v1/health``; raises :class:`VersionMismatch` when the API differs."""
        data = self._json("GET", "/health")
        if data.get("api_version") != API_VERSION:
            raise VersionMismatch(f"the backend speaks API {data.get('api_version')} (version {data.get('version')}) but this add-on speaks API {API_VERSION}: update the one that is older")
        return data

    def tasks(self) -> list[dict[str, Any]]:
        return self._json("GET", "/tasks")["tasks"]

    def jobs(self) -> list[dict[str, Any]]:
        return self._json("GET", "/jobs")["jobs"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/jobs/{urllib.parse.quote(job_id)}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/jobs/{urllib.parse.quote(job_id)}/cancel", {})

    def submit(self, bundle_dir: str | Path, *, task: str | None = None, params: dict[str, Any] | None = None, models: str | None = None, upload: bool | None = None) -> dict[str, Any]:
        """Submit a bundle directory; ``upload=None`` sends the path to a local backend
        (uploading instead if the backend refuses the path: outside its roots, or not there,
        as through an SSH tunnel to another machine) and uploads to a remote one. Returns
        the new job's state."""
        if upload is None:
            upload = not is_local_url(self.url)
        if not upload:
            try:
                return self.submit_path(bundle_dir, task=task, params=params, models=models)
            except BackendError as error:
                if error.field != "bundle_path":
                    raise
        return self.upload(bundle_dir, task=task, params=params, models=models)

    def submit_path(self, bundle_dir: str | Path, *, task: str | None = None, params: dict[str, Any] | None = None, models: str | None = None) -> dict[str, Any]:
        """Send the bundle's path (``POST /v1/jobs``; the backend reads it in place): quick.
        A backend that cannot read it answers with a :class:`BackendError` whose ``field``
        is ``bundle_path`` (outside its roots, or not on its machine)."""
        payload = {"task": task, "bundle_path": str(Path(bundle_dir).resolve()), "params": params or {}, "models": models}
        return self._json("POST", "/jobs", {key: value for key, value in payload.items() if value is not None})

    def upload(self, bundle_dir: str | Path, *, task: str | None = None, params: dict[str, Any] | None = None, models: str | None = None, timeout: float = 600.0) -> dict[str, Any]:
        """Stream ``bundle_dir`` as a tar body (``POST /v1/jobs``)."""
        query = {"task": task, "params": json.dumps(params) if params else None, "models": models}
        query_text = urllib.parse.urlencode({key: value for key, value in query.items() if value is not None})
        members = list(_tar_members(Path(bundle_dir)))
        size = _tar_size(members)
        limit = self.health().get("max_upload_bytes")
        if isinstance(limit, int) and size > limit:
            raise BackendError(f"bundle: {size / 2**20:.0f} MiB is more than the backend accepts ({limit / 2**20:.0f} MiB, serve --max-upload-mb)", status=413, code="too_large", field="bundle")
        headers = {"Content-Type": "application/x-tar", "Content-Length": str(size)}
        with self._request("POST", f"/jobs?{query_text}", body=_tar_stream(members), headers=headers, timeout=timeout) as response:
            return _read_json(response, "POST /jobs", self.url)

    def download(self, job_id: str, name: str, destination: str | Path, *, timeout: float = 300.0) -> Path:
        """Save output ``name`` of a job to ``destination`` (written atomically; nothing is
        written when the ``timeout`` seconds the whole download may take run out)."""
        destination = Path(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        temporary = destination.with_name(destination.name + ".part")
        route = f"/jobs/{urllib.parse.quote(job_id)}/outputs/{urllib.parse.quote(name)}"
        with self._request("GET", route, timeout=timeout) as response, open(temporary, "wb") as handle:
            while chunk := response.read(READ_CHUNK):
                handle.write(chunk)
        deadline = getattr(response, "deadline", None)  # plain HTTP only: HTTPS keeps per-wait timeouts
        if deadline is not None and deadline.expired:  # the shut-down socket ends the read early: the file is cut
            temporary.unlink(missing_ok=True)
            raise deadline.error(self.url)
        os.replace(temporary, destination)
        return destination

    def fetch_outputs(self, job: dict[str, Any], directory: str | Path) -> dict[str, Path]:
        """Every output of a done job in ``directory`` (the server's relative paths kept);
        returns name -> local path. Read from the job's directory when it is on this
        machine (:meth:`local_output_dir`), downloaded over HTTP otherwise."""
        source = self.local_output_dir(job)
        if source is None:
            return self.download_outputs(job, directory)
        return {name: _link_or_in_place(source / relative, Path(directory) / relative) for name, relative in _output_paths(job)}

    def local_output_dir(self, job: dict[str, Any]) -> Path | None:
        """The job's ``outputs/`` folder when this machine can read it: the backend is on
        a loopback address and every listed output is a file inside ``job["output_dir"]``
        (the status of ``GET /v1/jobs/{id}`` names it; only a ``<job id>/outputs`` folder
        is read in place, and a link out of it is not followed: anything else is
        downloaded, so a hostile ``output_dir`` cannot hand over a user's files). A backend on another machine,
        reached through an SSH tunnel to localhost, fails the file test. None otherwise."""
        output_dir = job.get("output_dir")
        if not isinstance(output_dir, str) or not output_dir or not is_local_url(self.url):
            return None
        source = Path(output_dir)
        if source.name != "outputs" or source.parent.name != checked_job_id(job):
            return None  # not a job's outputs folder: never read in place, download
        root = source.resolve()
        files = [(source / relative) for _, relative in _output_paths(job)]
        if all(path.is_file() and path.resolve().is_relative_to(root) for path in files):
            return source
        return None

    def download_outputs(self, job: dict[str, Any], directory: str | Path) -> dict[str, Path]:
        """Download every output of a finished job into ``directory``, keeping the
        server's relative paths; returns name -> local path."""
        job_id = checked_job_id(job)
        return {name: self.download(job_id, name, Path(directory) / relative) for name, relative in _output_paths(job)}


#: The backend's job ids (``poe_backend.server.jobs.new_job_id``): ``YYYYmmdd-HHMMSS-<6 hex>``.
JOB_ID = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{6}")


def checked_job_id(job: dict[str, Any]) -> str:
    """The job record's ``id`` when it has the backend's id format (it becomes a folder
    name under the results folder: ``../escape`` or an absolute path must not);
    BackendError otherwise."""
    job_id = job.get("id")
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise BackendError(f"the backend named a job {str(job_id)[:80]!r}, which is not a job id it makes; refusing it")
    return job_id


def _output_paths(job: dict[str, Any]) -> list[tuple[str, Path]]:
    """(name, path relative to the job's outputs folder) for each output; refuses
    absolute paths and ``..``."""
    paths = []
    for name, relative in job.get("outputs", {}).items():
        relative_path = Path(relative)
        if relative_path.is_absolute() or ".." in relative_path.parts:
            raise BackendError(f"the backend named an unsafe output path {relative!r}")
        paths.append((name, relative_path))
    return paths


def _link_or_in_place(source: Path, destination: Path) -> Path:
    """A hard link of ``source`` at ``destination`` (no bytes copied; the file outlives
    the backend deleting the job), or ``source`` itself where the filesystem refuses
    links (another disk, or one without them)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.unlink(missing_ok=True)
    try:
        os.link(source, destination)
    except OSError:
        return source
    return destination

#: The largest JSON answer read from the backend (a job list of thousands of jobs is a few
#: MiB); a larger one is refused unread rather than held in Blender's memory.
MAX_JSON_BYTES = 16 * 2**20


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse every redirect: urllib would resend ``Authorization`` to the new origin and
    take its answer as the backend's. The 3xx surfaces as an HTTPError."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        return None


class _Deadline:
    """A request's total time: ``seconds`` from the connection on, after which its socket is
    shut down (:class:`_DeadlineConnection`) and :attr:`expired` is set."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False

    def error(self, url: str) -> BackendError:
        return BackendError(f"the backend at {url} did not answer within {self.seconds:g} s; it may be stuck (see its log)")


class _DeadlineConnection(http.client.HTTPConnection):
    """An HTTP connection whose socket is shut down when its request's :class:`_Deadline`
    runs out, so a blocked send or read returns at once however the server drips. The
    timer holds the socket itself: urllib hands the socket to the response and clears
    ``self.sock`` once the headers are in."""

    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def connect(self) -> None:
        super().connect()
        sock, deadline = self.sock, self.deadline

        def expire() -> None:
            deadline.expired = True
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

        timer = threading.Timer(deadline.seconds, expire)
        timer.daemon = True
        timer.start()
        weakref.finalize(sock, timer.cancel)


class _DeadlineHandler(urllib.request.HTTPHandler):
    """Plain HTTP through :class:`_DeadlineConnection`; the response carries the deadline
    so its body is read under it (:func:`_read_json`)."""

    def http_open(self, req: urllib.request.Request) -> Any:
        response = self.do_open(functools.partial(_DeadlineConnection, deadline=req.deadline), req)
        response.deadline = req.deadline
        return response


_OPENER = urllib.request.build_opener(_NoRedirect, _DeadlineHandler)


def _read_json(response: Any, what: str, url: str) -> Any:
    """The JSON body of ``response``, at most :data:`MAX_JSON_BYTES` (BackendError beyond),
    read within the request's deadline (BackendError when it ran out mid-body)."""
    deadline = getattr(response, "deadline", None)
    try:
        data = response.read(MAX_JSON_BYTES + 1)
        if deadline is not None and deadline.expired:  # the shut-down socket ends the read early, not with an error
            raise deadline.error(url)
        if len(data) > MAX_JSON_BYTES:
            raise BackendError(f"the backend's answer to {what} is larger than {MAX_JSON_BYTES // 2**20} MiB; refusing it")
        return json.loads(data or b"null")
    except (OSError, ValueError, http.client.HTTPException):
        if deadline is not None and deadline.expired:
            raise deadline.error(url) from None
        raise


def _http_error(error: urllib.error.HTTPError) -> BackendError:
    if 300 <= error.code < 400:
        return BackendError(f"the backend answered {error.code} with a redirect to {error.headers.get('Location')!r}; redirects are refused (the token would go along)", status=error.code)
    try:
        detail = json.loads(error.read(MAX_JSON_BYTES) or b"{}")
    except ValueError:
        detail = {}
    info = detail.get("error") if isinstance(detail, dict) else None
    if isinstance(info, dict):
        message, code, field = info.get("message", str(error)), info.get("code"), info.get("field")
    else:
        message, code, field = f"HTTP {error.code}: {detail.get('detail', error.reason) if isinstance(detail, dict) else error.reason}", None, None
    kind = AuthError if error.code == 401 else BackendError
    if error.code == 401:
        message = f"the backend refused the token ({message})"
    return kind(message, status=error.code, code=code, field=field)


def _tar_members(root: Path) -> Iterator[tuple[tarfile.TarInfo, Path]]:
    """Regular files under ``root`` (links are not followed), in a stable order."""
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        info = tarfile.TarInfo(path.relative_to(root).as_posix())
        stat = path.stat()
        info.size, info.mtime, info.mode = stat.st_size, int(stat.st_mtime), 0o644
        yield info, path


def _header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _tar_size(members: list[tuple[tarfile.TarInfo, Path]]) -> int:
    size = sum(len(_header(info)) + _padded(info.size) for info, _ in members)
    return _padded_record(size + 2 * tarfile.BLOCKSIZE)


def _padded(size: int) -> int:
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _padded_record(size: int) -> int:
    return -(-size // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def _tar_stream(members: list[tuple[tarfile.TarInfo, Path]]) -> Iterator[bytes]:
    """The bytes of a tar of ``members``, exactly ``_tar_size`` long."""
    written = 0
    for info, path in members:
        header = _header(info)
        yield header
        with open(path, "rb") as handle:
            remaining = info.size
            while remaining > 0:
                chunk = handle.read(min(READ_CHUNK, remaining))
                if not chunk:
                    raise BackendError(f"{path} shrank while it was being uploaded")
                remaining -= len(chunk)
                yield chunk
        padding = _padded(info.size) - info.size
        yield b"\0" * padding
        written += len(header) + _padded(info.size)
    end = written + 2 * tarfile.BLOCKSIZE
    yield b"\0" * (_padded_record(end) - written)

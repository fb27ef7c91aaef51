"""Getting a bundle onto the server's disk safely: allowed roots for local paths, and a
streaming tar extractor that accepts only plain files and directories inside the target
(:func:`receive_tar` feeds it from the request body while the upload arrives).

The extractor never calls ``extractall``: every member is checked (no absolute names, no
``..``, no links, devices or FIFOs) and copied by hand, so a hostile tar cannot write
outside the job directory. Sizes are limited on the raw stream and on what is extracted
(the latter matters for ``.tar.gz``).
"""

from __future__ import annotations

import asyncio
import queue
import shutil
import tarfile
import threading
from pathlib import Path, PurePosixPath

from starlette.requests import Request

from poe_backend.bundle import BUNDLE_FILE
from poe_backend.server.errors import InputError

COPY_CHUNK = 1 << 20
STREAM_BATCH = 1 << 20


def too_large(limit_bytes: int) -> InputError:
    return InputError("bundle", f"upload larger than the limit of {limit_bytes / 2**20:.0f} MiB (serve --max-upload-mb)", code="too_large", status=413)


def check_under_roots(path_text: str, roots: list[Path]) -> Path:
    """Resolve a client-given bundle directory; it must lie under one of ``roots``."""
    path = Path(path_text).expanduser()
    if not path.is_absolute():
        raise InputError("bundle_path", f"must be an absolute path, got {path_text!r}")
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root.resolve()) for root in roots):
        allowed = ", ".join(str(root) for root in roots)
        raise InputError("bundle_path", f"{resolved} is outside the allowed roots ({allowed}); start the backend with --allow-root, or upload the bundle", code="outside_roots", status=403)
    if not resolved.is_dir():
        raise InputError("bundle_path", f"{resolved} is not a directory")
    return resolved


def _safe_member_path(member: tarfile.TarInfo, destination: Path) -> Path:
    name = member.name
    where = f"bundle:{name}"
    pure = PurePosixPath(name)
    if name.startswith(("/", "\\")) or pure.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise InputError(where, "absolute paths are not allowed in a bundle tar", code="bad_tar")
    if ".." in pure.parts or "\\" in name:
        raise InputError(where, "'..' (or a backslash) is not allowed in a bundle tar", code="bad_tar")
    if not (member.isfile() or member.isdir()):
        kind = "link" if (member.issym() or member.islnk()) else "device or special file"
        raise InputError(where, f"{kind} entries are not allowed in a bundle tar", code="bad_tar")
    target = (destination / pure).resolve()
    if not target.is_relative_to(destination.resolve()):
        raise InputError(where, "resolves outside the bundle", code="bad_tar")
    return target


def extract_tar(fileobj, destination: Path, limit_bytes: int) -> Path:
    """Extract a (possibly gzip-compressed) tar stream into ``destination``; returns the
    bundle root (``destination`` or its single top-level folder holding bundle.json)."""
    destination.mkdir(parents=True, exist_ok=True)
    extracted = 0
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*", bufsize=COPY_CHUNK) as archive:
            for member in archive:
                target = _safe_member_path(member, destination)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                extracted += member.size
                if extracted > limit_bytes:
                    raise too_large(limit_bytes)
                target.parent.mkdir(parents=True, exist_ok=True)
                source = archive.extractfile(member)
                with open(target, "wb") as handle:
                    shutil.copyfileobj(source, handle, COPY_CHUNK)
    except tarfile.TarError as error:
        raise InputError("bundle", f"not a valid tar archive ({error})", code="bad_tar") from None
    return bundle_root(destination)


def bundle_root(destination: Path) -> Path:
    if (destination / BUNDLE_FILE).is_file():
        return destination
    children = [child for child in destination.iterdir()]
    if len(children) == 1 and (children[0] / BUNDLE_FILE).is_file():
        return children[0]
    raise InputError("bundle", "the tar has no bundle.json at its top level (or in one top-level folder)", code="bad_tar")


class StreamReader:
    """A file-like ``read()`` over chunks handed in from another thread (the HTTP side), so
    extraction runs while the upload is still arriving. ``put`` returns False once the
    reader was closed (the extractor gave up), so the producer can stop."""

    def __init__(self, max_chunks: int = 8) -> None:
        self._chunks: queue.Queue[bytes] = queue.Queue(max_chunks)
        self._buffer = memoryview(b"")
        self._closed = threading.Event()

    def put(self, chunk: bytes) -> bool:
        while not self._closed.is_set():
            try:
                self._chunks.put(chunk, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def close(self) -> None:
        self._closed.set()

    def read(self, size: int = -1) -> bytes:
        parts, wanted = [], size if size >= 0 else float("inf")
        while wanted > 0:
            if not self._buffer:
                chunk = self._chunks.get()
                if not chunk:  # end of stream
                    self._chunks.put(b"")
                    break
                self._buffer = memoryview(chunk)
            take = self._buffer[: int(min(wanted, len(self._buffer)))]
            self._buffer = self._buffer[len(take):]
            parts.append(bytes(take))
            wanted -= len(take)
        return b"".join(parts)


def check_declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)


async def receive_tar(request: Request, upload_dir: Path, limit: int) -> Path:
    """Extract the request body while it arrives (batches of ~1 MiB go to a thread). If
    the extractor refuses the tar early, the rest of the body is read and dropped so the
    client still gets the 400 answer instead of a broken pipe."""
    check_declared_length(request, limit)
    reader = StreamReader()
    loop = asyncio.get_running_loop()

    def extract() -> Path:
        try:
            return extract_tar(reader, upload_dir, limit)
        finally:
            reader.close()

    extraction = loop.run_in_executor(None, extract)
    received, batch, accepting = 0, [], True
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise too_large(limit)
            if not chunk or not accepting:
                continue
            batch.append(chunk)
            if sum(map(len, batch)) >= STREAM_BATCH:
                accepting = await loop.run_in_executor(None, reader.put, b"".join(batch))
                batch = []
        if accepting and batch:
            await loop.run_in_executor(None, reader.put, b"".join(batch))
        await loop.run_in_executor(None, reader.put, b"")
    except BaseException:
        reader.close()
        await asyncio.gather(extraction, return_exceptions=True)
        raise
    return await extraction

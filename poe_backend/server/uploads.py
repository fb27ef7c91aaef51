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
    """Extract a tar stream (plain, or gzip-compressed) into ``destination``; returns the
    bundle root (``destination`` or its single top-level folder holding bundle.json).

    Plain tars (what the add-on sends) take a direct path: headers parsed with
    :class:`tarfile.TarInfo`, file bytes copied straight from the stream in 1 MiB reads
    (``tarfile``'s stream mode copies every byte through extra buffers and is ~3x
    slower). Compressed ones go through ``tarfile``."""
    destination.mkdir(parents=True, exist_ok=True)
    try:
        first = _read_up_to(fileobj, tarfile.BLOCKSIZE)
        if first[:2] == GZIP_MAGIC:
            _extract_with_tarfile(_Prepended(first, fileobj), destination, limit_bytes)
        elif first and len(first) < tarfile.BLOCKSIZE:
            raise EOFError(f"the tar ends in the middle of its first block ({len(first)} bytes)")
        else:
            _extract_plain(first, fileobj, destination, limit_bytes)
    except (tarfile.TarError, EOFError) as error:
        raise InputError("bundle", f"not a valid tar archive ({error or 'truncated'})", code="bad_tar") from None
    except OSError as error:  # members that collide: a file named '.', a folder over a file
        raise InputError("bundle", f"the tar's members cannot be written ({error.strerror}: {Path(error.filename or '').name})", code="bad_tar") from None
    return bundle_root(destination)


GZIP_MAGIC = b"\x1f\x8b"
PAX_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)


def _read_up_to(fileobj, size: int) -> bytes:
    """Up to ``size`` bytes (fewer only at the end of the stream)."""
    data = b""
    while len(data) < size and (more := fileobj.read(size - len(data))):
        data += more
    return data


def _read_exactly(fileobj, size: int, *, allow_eof: bool = False) -> bytes:
    data = fileobj.read(size)
    while len(data) < size:
        more = fileobj.read(size - len(data))
        if not more:
            if allow_eof and not data:
                return b""
            raise EOFError(f"the tar ends in the middle of a block ({len(data)} of {size} bytes)")
        data += more
    return data


def _padding(size: int) -> int:
    return -size % tarfile.BLOCKSIZE


def _extract_plain(block: bytes, fileobj, destination: Path, limit_bytes: int) -> None:
    extracted, long_name = 0, None
    while block and block != tarfile.NUL * tarfile.BLOCKSIZE:
        member = tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
        if member.type in PAX_TYPES or member.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            if member.size > 1 << 20:
                raise InputError("bundle", "tar extended header larger than 1 MiB", code="bad_tar")
            data = _read_exactly(fileobj, member.size + _padding(member.size))[: member.size]
            if member.type == tarfile.GNUTYPE_LONGNAME:
                long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            elif member.type != tarfile.XGLTYPE:
                long_name = _pax_path(data) or long_name
            block = _read_exactly(fileobj, tarfile.BLOCKSIZE, allow_eof=True)
            continue
        if long_name is not None:
            member.name, long_name = long_name, None
        target = _safe_member_path(member, destination)
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            extracted += member.size
            if extracted > limit_bytes:
                raise too_large(limit_bytes)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as handle:
                remaining = member.size
                while remaining > 0:
                    chunk = fileobj.read(min(COPY_CHUNK, remaining))
                    if not chunk:
                        raise EOFError(f"the tar ends inside {member.name}")
                    handle.write(chunk)
                    remaining -= len(chunk)
            _read_exactly(fileobj, _padding(member.size))
        block = _read_exactly(fileobj, tarfile.BLOCKSIZE, allow_eof=True)


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a pax extended header (``"<len> key=value\\n"`` records)."""
    position = 0
    while position < len(data):
        length_text, _, _ = data[position:].partition(b" ")
        if not length_text.isdigit():
            raise InputError("bundle", "malformed pax header in the tar", code="bad_tar")
        record = data[position : position + int(length_text)]
        key, _, value = record.partition(b" ")[2].partition(b"=")
        if key == b"path":
            return value.rstrip(b"\n").decode("utf-8", "surrogateescape")
        position += int(length_text)
    return None


def _extract_with_tarfile(fileobj, destination: Path, limit_bytes: int) -> None:
    extracted = 0
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
            with open(target, "wb") as handle:
                shutil.copyfileobj(archive.extractfile(member), handle, COPY_CHUNK)


class _Prepended:
    """``read()`` that first returns ``head``, then reads ``fileobj``."""

    def __init__(self, head: bytes, fileobj) -> None:
        self.head, self.fileobj = head, fileobj

    def read(self, size: int = -1) -> bytes:
        if self.head:
            data, self.head = (self.head, b"") if size < 0 or size >= len(self.head) else (self.head[:size], self.head[size:])
            return data
        return self.fileobj.read(size)


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

    def _next_chunk(self) -> bytes:
        """The next queued chunk; ``EOFError`` once the producer closed the reader (an
        aborted or refused upload), so the extractor thread never waits forever."""
        while True:
            try:
                return self._chunks.get(timeout=0.1)
            except queue.Empty:
                if self._closed.is_set():
                    raise EOFError("upload aborted") from None

    def read(self, size: int = -1) -> bytes:
        parts, wanted = [], size if size >= 0 else float("inf")
        while wanted > 0:
            if not self._buffer:
                chunk = self._next_chunk()
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

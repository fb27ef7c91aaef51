"""Getting a bundle onto the server's disk safely: allowed roots for local paths, and tar
uploads extracted while they arrive, bounded in time, size and threads.

* :func:`limited_body` reads the request body in the event loop: every wait for the next
  piece has a timeout, the body must come at a minimum average rate once a grace period
  has passed, and it has a size limit, so a stalled, trickling or abandoned upload ends
  (the caller then removes the job's directory).
* :class:`UploadSlots` bounds the uploads received at once: past the bound a client gets a
  503 (code ``busy``, with ``Retry-After``) before any folder or thread is made for it.
* :func:`receive_tar` hands the pieces to a thread of the upload's own through a
  :class:`~poe_backend.server.body_pipe.BodyPipe`, where :func:`extract_tar` writes the
  members as their bytes come: each byte is written once, straight into its file (no
  temporary copy of the body), and extraction overlaps the transfer. The thread waits only
  for the pipe, which the event loop ends on every outcome, so stalled uploads never hold
  the threads of other uploads or routes.
* :func:`extract_tar` uses the standard library's :mod:`tarfile` (random-access mode,
  members in order) and its ``data`` filter, after our own stricter rule per member (plain
  files and directories only, no absolute names, no ``..``). gzip is decoded by
  :class:`gzip.GzipFile` (linear time; tarfile's stream mode re-slices its whole
  decompressed buffer on every read, which made a gzip bomb quadratic). Entries (empty
  files and directories too) and bytes are counted against :class:`UploadLimits`, and the
  decoded tar can never be read past the byte limit. Multipart uploads (spooled to a
  temporary file by starlette) are extracted from that file by the same function.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gzip
import tarfile
import threading
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from poe_backend.bundle import BUNDLE_FILE
from poe_backend.server.body_pipe import BodyPipe
from poe_backend.server.errors import InputError

#: Size of one read when a member's bytes are copied out of the tar (bytes).
COPY_CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class UploadLimits:
    """What one bundle upload may use.

    ``max_bytes``: the tar as received, and again after gzip decoding (bytes; default
    8 GiB, ``serve --max-upload-mb``). ``max_entries``: tar members of every kind, empty
    files and directories included (default 20 000; a bundle of 81 frames with five
    passes has ~400). Vetting and creating one entry costs ~0.3 ms (the data filter
    resolves every path), so the default bounds a flood of empty entries to ~6 s of one
    thread. ``read_timeout_s``: the longest wait for the next piece of the body
    (seconds, default 60), after which the upload is dropped with a 408.

    ``min_rate_bytes_s`` after ``rate_grace_s``: once the client has been waited for
    ``rate_grace_s`` seconds (default 60), the body must have come at ``min_rate_bytes_s``
    on average (bytes/s, default 64 KiB/s, ``serve --upload-min-rate-kib``), else a 408.
    A floor on the average rather than a total deadline: a deadline scaled with
    Content-Length needs a declared length (a chunked body has none) and drops a long
    upload that is still making steady progress; the floor lets an 8 GiB bundle through
    over any link faster than 0.5 Mbit/s, however long it takes (2.3 h at 1 MiB/s), while
    one byte every 20 s is dropped after the grace, which covers a slow start (a client
    reading its first files, TCP ramping up). Only the time spent waiting for the client
    counts, not the server's own pauses (the extracting thread catching up). Holding an
    upload slot thus costs a client at least ``min_rate_bytes_s`` of bandwidth.

    ``max_concurrent``: uploads received at once (default 8, ``serve --max-uploads``);
    each holds a job folder and, for a tar body, an extracting thread."""

    max_bytes: int = 8 << 30
    max_entries: int = 20_000
    read_timeout_s: float = 60.0
    min_rate_bytes_s: float = 64 << 10
    rate_grace_s: float = 60.0
    max_concurrent: int = 8

    def paid_wait_s(self, received: int) -> float:
        """Seconds of waiting for the client that ``received`` bytes pay for under the
        rate rule: the grace, or longer once the bytes cover more at the minimum rate."""
        return max(self.rate_grace_s, received / self.min_rate_bytes_s)


#: Seconds a client refused for lack of an upload slot is told to wait (``Retry-After``).
BUSY_RETRY_AFTER_S = 10


def uploads_busy(limit: int) -> InputError:
    """503 ``busy``: every upload slot is taken; the answer carries ``Retry-After``."""
    message = f"the backend is receiving {limit} uploads already (its limit, serve --max-uploads); retry in {BUSY_RETRY_AFTER_S} s"
    return InputError("bundle", message, code="busy", status=503, headers={"Retry-After": str(BUSY_RETRY_AFTER_S)})


class UploadSlots:
    """At most ``limit`` uploads received at once. Taken and given back in the event loop
    only, so a plain count needs no lock."""

    def __init__(self, limit: int) -> None:
        self.limit, self.taken = limit, 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """One slot for the block; raises :func:`uploads_busy` (503) when none is free."""
        if self.taken >= self.limit:
            raise uploads_busy(self.limit)
        self.taken += 1
        try:
            yield
        finally:
            self.taken -= 1


def too_large(limit_bytes: int) -> InputError:
    return InputError("bundle", f"upload larger than the limit of {limit_bytes / 2**20:.0f} MiB (uncompressed; serve --max-upload-mb)", code="too_large", status=413)


def check_under_roots(path_text: object, roots: list[Path]) -> Path:
    """Resolve a client-given bundle directory; it must be an absolute path (a string
    without NUL characters) under one of ``roots``."""
    if not isinstance(path_text, str):
        raise InputError("bundle_path", f"must be a string (an absolute path), got {type(path_text).__name__}")
    if "\0" in path_text:
        raise InputError("bundle_path", "must not contain NUL characters")
    path = Path(path_text).expanduser()
    if not path.is_absolute():
        raise InputError("bundle_path", f"must be an absolute path, got {path_text!r}")
    try:  # a symlink loop (RuntimeError on Python 3.11), a name too long, a folder we may not enter
        resolved = path.resolve()
        inside = any(resolved.is_relative_to(root.resolve()) for root in roots)
        is_dir = inside and resolved.is_dir()
    except (OSError, RuntimeError) as error:
        raise InputError("bundle_path", f"cannot be resolved ({getattr(error, 'strerror', None) or error})") from None
    if not inside:
        allowed = ", ".join(str(root) for root in roots)
        raise InputError("bundle_path", f"{resolved} is outside the allowed roots ({allowed}); start the backend with --allow-root, or upload the bundle", code="outside_roots", status=403)
    if not is_dir:
        raise InputError("bundle_path", f"{resolved} is not a directory")
    return resolved


def _check_declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)


async def receive_tar(request: Request, upload_dir: Path, limits: UploadLimits) -> Path:
    """Extract the tar body into ``upload_dir`` while it arrives; returns the bundle root.
    The body is read to its end even when the tar was refused early, so the client gets
    the answer; errors of the body (408, 413, a disconnect) come first, then the tar's. On
    an error the caller removes ``upload_dir.parent`` (the job's directory), which holds
    everything this wrote; the extracting thread has ended by then."""
    loop = asyncio.get_running_loop()
    pipe = BodyPipe(loop)
    extracted: concurrent.futures.Future[Path] = concurrent.futures.Future()
    threading.Thread(target=_extract_from_pipe, args=(pipe, upload_dir, limits, extracted), name="poe-upload-extract", daemon=True).start()
    try:
        async for chunk in limited_body(request, limits):
            await pipe.put(chunk)
    except BaseException as error:
        pipe.close(error)
        await asyncio.wait([asyncio.wrap_future(extracted)])
        raise
    pipe.close()
    return await asyncio.wrap_future(extracted)


def _extract_from_pipe(pipe: BodyPipe, destination: Path, limits: UploadLimits, extracted: concurrent.futures.Future) -> None:
    try:
        root = extract_tar(pipe, destination, limits)
    except BaseException as error:  # noqa: BLE001 - handed to the event loop
        pipe.reader_done()
        extracted.set_exception(error)
    else:
        pipe.reader_done()
        extracted.set_result(root)


async def receive_form(request: Request, limits: UploadLimits) -> FormData:
    """The multipart form of ``request``, read under the same limits as a tar body
    (starlette spools its file parts to temporary files); at most one file part."""
    parser = MultiPartParser(request.headers, limited_body(request, limits), max_files=1, max_fields=8)
    try:
        return await parser.parse()
    except MultiPartException as error:
        raise InputError("body", f"not a valid multipart form ({error.message})") from None


async def limited_body(request: Request, limits: UploadLimits) -> AsyncIterator[bytes]:
    """The pieces of the request body. Raises 413 past ``limits.max_bytes`` (declared or
    received); 408 when no data came for ``limits.read_timeout_s`` (code
    ``upload_timeout``) or when the body falls below the minimum average rate after the
    grace (code ``upload_too_slow``, see :class:`UploadLimits`); 400 when the client went
    away. Each wait for a piece is bounded by one :func:`asyncio.timeout` (a timer, no
    task per piece: a large upload arrives in thousands of pieces), set to whichever rule
    ends it first."""
    _check_declared_length(request, limits.max_bytes)
    loop = asyncio.get_running_loop()
    chunks, received, waited = aiter(request.stream()), 0, 0.0
    while True:
        rate_left_s = limits.paid_wait_s(received) - waited
        if rate_left_s <= 0:
            raise _too_slow(limits, received, waited)
        started = loop.time()
        try:
            async with asyncio.timeout(min(limits.read_timeout_s, rate_left_s)):
                chunk = await anext(chunks, None)
        except TimeoutError:
            if limits.read_timeout_s < rate_left_s:
                raise InputError("bundle", f"the upload stalled: no data for {limits.read_timeout_s:g} s", code="upload_timeout", status=408) from None
            raise _too_slow(limits, received, waited + rate_left_s) from None
        except ClientDisconnect:
            raise InputError("bundle", "the client disconnected before the upload ended", code="upload_aborted") from None
        waited += loop.time() - started
        if chunk is None:
            return
        received += len(chunk)
        if received > limits.max_bytes:
            raise too_large(limits.max_bytes)
        yield chunk


def _too_slow(limits: UploadLimits, received: int, waited_s: float) -> InputError:
    rate, floor = received / 1024 / waited_s, limits.min_rate_bytes_s / 1024
    message = f"the upload is too slow: {rate:.3g} KiB/s on average over {waited_s:.3g} s (at least {floor:g} KiB/s after the first {limits.rate_grace_s:g} s; serve --upload-min-rate-kib)"
    return InputError("bundle", message, code="upload_too_slow", status=408)


def extract_tar(source: BinaryIO | BodyPipe, destination: Path, limits: UploadLimits) -> Path:
    """Extract the tar (plain, or gzip-compressed) read in order from ``source`` (a
    seekable binary file at its start, or a body pipe) into ``destination``; returns the bundle root (``destination`` or its single top-level folder holding
    bundle.json). Raises :class:`InputError` naming the bad member (``bundle:<name>``)
    or ``bundle`` for the archive as a whole."""
    destination.mkdir(parents=True, exist_ok=True)
    try:
        with open_tar(source, limits.max_bytes) as archive:
            _extract_members(archive, destination, limits)
    except tarfile.FilterError as error:
        raise InputError(f"bundle:{error.tarinfo.name}", f"refused by the tar data filter ({error})", code="bad_tar") from None
    except RecursionError:  # tarfile reads a chain of pax/GNU headers recursively
        raise InputError("bundle", "the tar chains too many extended (pax or GNU long-name) headers", code="bad_tar") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise InputError("bundle", f"not a valid tar archive ({error or 'truncated'})", code="bad_tar") from None
    except OSError as error:  # members that collide: a file named '.', a folder over a file
        raise InputError("bundle", f"the tar's members cannot be written ({error.strerror}: {Path(error.filename or '').name})", code="bad_tar") from None
    return bundle_root(destination)


@contextlib.contextmanager
def open_tar(source: BinaryIO | BodyPipe, max_bytes: int) -> Iterator[tarfile.TarFile]:
    """The tar in ``source`` (gzip decoded when it starts with gzip's magic), readable to
    at most ``max_bytes`` decoded bytes; tarfile errors are fatal (``errorlevel=2``), so
    the data filter's refusals raise instead of skipping the member."""
    with contextlib.ExitStack() as stack:
        stream = stack.enter_context(gzip.GzipFile(fileobj=source, mode="rb")) if _starts_with_gzip(source) else source
        capped = _CappedReader(stream, max_bytes)
        yield stack.enter_context(tarfile.open(fileobj=capped, mode="r:", errorlevel=2, copybufsize=COPY_CHUNK))


def _starts_with_gzip(source: BinaryIO | BodyPipe) -> bool:
    """Whether ``source`` starts with gzip's magic; it is left at its start."""
    if isinstance(source, BodyPipe):
        return source.peek(2) == GZIP_MAGIC
    head = source.read(2)
    source.seek(0)
    return head == GZIP_MAGIC


class _CappedReader:
    """``read``/``seek``/``tell`` over a binary stream that fails with a 413 once more
    than ``limit`` bytes would be read (a gzip bomb stops at the limit). tarfile reads
    member data in pieces of at most :data:`COPY_CHUNK`; only an extended (pax or GNU
    long-name) header is read in one piece, so a larger read is refused before it
    allocates (a header claiming gigabytes)."""

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        self.stream, self.limit = stream, limit

    def read(self, size: int = -1) -> bytes:
        if not 0 <= size <= COPY_CHUNK:
            raise InputError("bundle", f"the tar has an extended header larger than {COPY_CHUNK >> 20} MiB", code="bad_tar")
        data = self.stream.read(min(size, self.limit + 1 - self.stream.tell()))
        if self.stream.tell() > self.limit:
            raise too_large(self.limit)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.stream.seek(offset, whence)

    def tell(self) -> int:
        return self.stream.tell()


def _extract_members(archive: tarfile.TarFile, destination: Path, limits: UploadLimits) -> None:
    entries = extracted = 0
    for member in archive:
        entries += 1
        if entries > limits.max_entries:
            raise InputError("bundle", f"the tar has more than {limits.max_entries} entries (the limit)", code="too_many_entries", status=413)
        _check_member(member)
        extracted += member.size
        if extracted > limits.max_bytes:
            raise too_large(limits.max_bytes)
        archive.extract(member, destination, set_attrs=False, filter="data")


def _check_member(member: tarfile.TarInfo) -> None:
    """Our rule on top of the data filter (which strips a leading ``/`` and allows links
    inside the destination): names of UTF-8 text without NUL (the data filter raises a
    ValueError on a NUL; undecodable bytes, kept as lone surrogates, cannot be answered),
    only plain files and directories, relative names, no ``..``."""
    name = member.name
    if "\0" in name or not _is_utf8(name):
        raise InputError(f"bundle:{_escaped(name)}", "member names must be UTF-8 text without NUL characters", code="bad_tar")
    where = f"bundle:{name}"
    pure = PurePosixPath(name)
    if name.startswith(("/", "\\")) or pure.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise InputError(where, "absolute paths are not allowed in a bundle tar", code="bad_tar")
    if ".." in pure.parts or "\\" in name:
        raise InputError(where, "'..' (or a backslash) is not allowed in a bundle tar", code="bad_tar")
    if not (member.isfile() or member.isdir()) or member.issparse():
        kind = "link" if (member.issym() or member.islnk()) else "sparse, device or special file"
        raise InputError(where, f"{kind} entries are not allowed in a bundle tar", code="bad_tar")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _escaped(name: str) -> str:
    """``name`` showable in an answer: lone surrogates as ``\\udcNN``, NUL as ``\\x00``."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8").replace("\0", "\\x00")


def bundle_root(destination: Path) -> Path:
    if (destination / BUNDLE_FILE).is_file():
        return destination
    children = list(destination.iterdir())
    if len(children) == 1 and (children[0] / BUNDLE_FILE).is_file():
        return children[0]
    raise InputError("bundle", "the tar has no bundle.json at its top level (or in one top-level folder)", code="bad_tar")

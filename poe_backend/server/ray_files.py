"""Files of the Ray executor (:mod:`poe_backend.server.ray_executor`) without Ray: a job's
bundle sent to a worker's node in chunks, kept there by content hash, and its outputs sent
back the same way. No shared filesystem is needed.

A bundle is the regular files under its folder (followed links included, empty folders
not: a bundle is read by file), named by their paths relative to it. Its **digest** is the
SHA-256 of every file's relative path, size and bytes, in path order
(:func:`bundle_digest`): two jobs on the same shot share it whatever their params, so N
seeds of a shot cross the network once per machine. The head computes a folder's digest once
per state of its files (:class:`DigestMemo`: keyed by each file's path, size, mtime and
inode), so a 2 GB bundle is not hashed again for its next job.

On a worker's machine (:class:`NodeFiles`, one folder per host name, shared by the actors
there) a bundle arrives under ``<root>/incoming/<digest>-<pid>`` chunk by chunk (each
written at its offset, so their order does not matter), is checked against its manifest
and digest, then renamed to ``<root>/bundles/<digest>``: a bundle in the cache is always
complete. The cache holds at most ``cache_bytes``; beyond that the bundles used longest ago
go first (a bundle's folder mtime is touched at each use), never the one just added, nor
one used in the last :data:`IN_USE_S` (a job may still read it). A job's outputs are
written under ``<root>/outputs/<job id>-<seq>`` and removed once the head has them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

#: Bytes of one chunk sent through Ray's object store (bundles and outputs): large enough
#: that the per-object overhead (about a millisecond) is small beside the copy, small
#: enough that a few in flight stay well inside a node's object store.
CHUNK_BYTES = 8 << 20
#: Default bound of a machine's bundle cache (bytes): about a hundred sim2video shots
#: (50-200 MB each) or thousands of insertions (about 5 MB each).
CACHE_BYTES = 20 << 30
#: Seconds after its last use during which a cached bundle is never evicted (longer than any
#: job reads its bundle: a sim2video job runs about 15 minutes).
IN_USE_S = 3600.0
#: Folders :class:`DigestMemo` remembers (the head's bundles of the latest jobs).
DIGEST_MEMO_ENTRIES = 256

#: A bundle's or an output folder's files: (path relative to the folder, POSIX; size in bytes).
Manifest = list[tuple[str, int]]


class TransferError(RuntimeError):
    """A bundle or output that did not arrive whole (a size or digest that differs from
    what was sent), or a path that would leave its folder."""


def file_manifest(folder: Path) -> Manifest:
    """Every regular file under ``folder`` (links to files followed), by relative path in
    sorted order, with its size; folders and anything that is no regular file are left out."""
    manifest = []
    for directory, _, names in os.walk(folder):
        for name in names:
            path = Path(directory) / name
            if path.is_file():
                manifest.append((path.relative_to(folder).as_posix(), path.stat().st_size))
    return sorted(manifest)


def bundle_digest(folder: Path, manifest: Manifest) -> str:
    """SHA-256 (hex) of ``manifest``'s files in ``folder``: each one's path, size and bytes."""
    digest = hashlib.sha256()
    for relative, size in manifest:
        digest.update(f"{relative}\0{size}\0".encode("utf-8", "surrogateescape"))
        with open(folder / relative, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


class DigestMemo:
    """The head's memo of bundle digests, shared by its workers' threads: a folder is hashed
    again only when one of its files changed (path, size, mtime or inode); at most
    :data:`DIGEST_MEMO_ENTRIES` folders."""

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple, str] = OrderedDict()
        self._lock = threading.Lock()

    def digest(self, folder: Path) -> tuple[str, Manifest]:
        """``folder``'s digest and manifest (hashed outside the lock: one large bundle does
        not hold up the other workers)."""
        manifest = file_manifest(folder)
        key = (str(folder), *((relative, size, _signature(folder / relative)) for relative, size in manifest))
        with self._lock:
            known = self._entries.get(key)
            if known is not None:
                self._entries.move_to_end(key)
                return known, manifest
        digest = bundle_digest(folder, manifest)
        with self._lock:
            self._entries[key] = digest
            while len(self._entries) > DIGEST_MEMO_ENTRIES:
                self._entries.popitem(last=False)
        return digest, manifest


def _signature(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_mtime_ns, status.st_ino


def contained(folder: Path, relative: str) -> Path:
    """``folder / relative`` for a relative POSIX path that stays in ``folder`` (no
    absolute path, no ``..``, no NUL); :class:`TransferError` otherwise."""
    parts = PurePosixPath(relative).parts
    if not relative or "\0" in relative or PurePosixPath(relative).is_absolute() or ".." in parts:
        raise TransferError(f"refusing the path {relative!r}: it would leave {folder}")
    return folder.joinpath(*parts)


def read_chunks(folder: Path, manifest: Manifest) -> Iterator[tuple[str, int, bytes]]:
    """``(relative path, offset, bytes)`` of every :data:`CHUNK_BYTES` piece of
    ``manifest``'s files in ``folder`` (an empty file is one empty chunk, so it arrives too)."""
    for relative, size in manifest:
        with open(folder / relative, "rb") as handle:
            offset = 0
            while True:
                data = handle.read(CHUNK_BYTES)
                yield relative, offset, data
                offset += len(data)
                if offset >= size or not data:
                    break


def write_chunk(folder: Path, relative: str, offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset`` of ``folder / relative`` (created with its parents;
    files 0600, folders 0700)."""
    path = contained(folder, relative)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.pwrite(descriptor, data, offset)
    finally:
        os.close(descriptor)


def check_arrived(folder: Path, manifest: Manifest) -> None:
    """Raise :class:`TransferError` unless ``folder`` holds exactly ``manifest``'s files
    at their sizes."""
    arrived = file_manifest(folder)
    if arrived != sorted(manifest):
        missing = sorted(set(manifest) - set(arrived))[:3]
        raise TransferError(f"{folder.name}: {len(arrived)} files arrived where {len(manifest)} were sent (first differences: {missing})")


class NodeFiles:
    """One machine's bundle cache and job outputs under ``root``, shared by the worker
    actors there (two receiving one bundle at once each use their own incoming folder)."""

    def __init__(self, root: Path, cache_bytes: int = CACHE_BYTES) -> None:
        self.root, self.cache_bytes = root, cache_bytes
        for name in ("incoming", "bundles", "outputs"):
            (root / name).mkdir(mode=0o700, parents=True, exist_ok=True)

    def bundle_dir(self, digest: str) -> Path:
        return self.root / "bundles" / _checked_digest(digest)

    def has_bundle(self, digest: str) -> bool:
        """Whether the bundle is cached here (and mark it used now)."""
        folder = self.bundle_dir(digest)
        if not folder.is_dir():
            return False
        os.utime(folder)
        return True

    def incoming_dir(self, digest: str) -> Path:
        """Where this process receives the bundle (its own folder: two actors of a node may
        receive the same bundle at once)."""
        return self.root / "incoming" / f"{_checked_digest(digest)}-{os.getpid()}"

    def begin_bundle(self, digest: str) -> None:
        """Forget any earlier, unfinished arrival of this bundle."""
        shutil.rmtree(self.incoming_dir(digest), ignore_errors=True)
        self.incoming_dir(digest).mkdir(mode=0o700, parents=True)

    def commit_bundle(self, digest: str, manifest: Manifest) -> None:
        """Check the arrived bundle against ``manifest`` and ``digest`` and move it into the
        cache; then evict the least recently used bundles beyond ``cache_bytes``. Raises
        :class:`TransferError` (and drops the arrival) when it differs."""
        incoming = self.incoming_dir(digest)
        try:
            check_arrived(incoming, manifest)
            arrived = bundle_digest(incoming, sorted(manifest))
            if arrived != digest:
                raise TransferError(f"bundle {digest[:12]} arrived with the digest {arrived[:12]}: it was corrupted on the way")
            try:
                os.rename(incoming, self.bundle_dir(digest))
            except OSError:
                if not self.bundle_dir(digest).is_dir():  # else another actor of this node was first
                    raise
        finally:
            shutil.rmtree(incoming, ignore_errors=True)
        self.evict(keep=digest)

    def evict(self, keep: str) -> None:
        """Remove the least recently used bundles until the cache holds at most
        ``cache_bytes``; never ``keep``, nor a bundle used in the last
        :data:`IN_USE_S` (a job of another actor of this machine may be reading it)."""
        recent = time.time() - IN_USE_S
        folders = sorted((path for path in (self.root / "bundles").iterdir() if path.name != keep and path.stat().st_mtime < recent), key=lambda path: path.stat().st_mtime)
        sizes = {path: sum(size for _, size in file_manifest(path)) for path in folders}
        total = sum(sizes.values()) + sum(size for _, size in file_manifest(self.bundle_dir(keep)))
        for path in folders:
            if total <= self.cache_bytes:
                break
            shutil.rmtree(path, ignore_errors=True)
            total -= sizes[path]

    def outputs_dir(self, job_id: str, seq: int) -> Path:
        """The outputs folder of job ``job_id``'s order ``seq``."""
        return contained(self.root / "outputs", f"{job_id}-{seq}")

    def fresh_outputs_dir(self, job_id: str, seq: int) -> Path:
        """:meth:`outputs_dir`, made empty."""
        folder = self.outputs_dir(job_id, seq)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(mode=0o700)
        return folder

    def drop_outputs(self, job_id: str, seq: int) -> None:
        shutil.rmtree(self.outputs_dir(job_id, seq), ignore_errors=True)


def _checked_digest(digest: str) -> str:
    if len(digest) != 64 or any(char not in "0123456789abcdef" for char in digest):
        raise TransferError(f"not a SHA-256 digest: {digest[:80]!r}")
    return digest



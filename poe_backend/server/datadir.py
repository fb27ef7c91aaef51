"""The data directory: owner-only folders and the exclusive lock one server holds on it.

Layout: ``<data>/`` (0700) holds ``token`` (0600), ``server.lock``, ``presets/`` and
``jobs/<id>/`` (0700 each). The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on
``server.lock``, which holds ``{"pid", "port"}`` of the holder; the kernel drops it when
the process dies (kill -9 included), so a stale file never blocks a restart.

A data dir this process may not write (another owner's, a read-only file system) is
:class:`DataDirUnwritable` at start (:func:`writable_private_dir`), naming the folder and
what to do; at submission the same refusal is a 503 (``jobs.storage_error``).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path

LOCK_FILE = "server.lock"
#: errno values of a write the OS refuses to this process (not a full disk: that is 507).
UNWRITABLE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


class DataDirBusy(RuntimeError):
    """Another live server holds the data directory; the message names its pid and port."""


class DataDirUnwritable(RuntimeError):
    """This process may not write a folder of its data directory; the message names the
    folder, the OS's reason and what to do."""


def make_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and set it to 0700 (owner only)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def is_unwritable(error: BaseException) -> bool:
    """Whether ``error`` is the OS refusing a write (permissions, a read-only file system)."""
    return isinstance(error, OSError) and error.errno in UNWRITABLE_ERRNOS


def unwritable_message(path: Path | str, error: OSError) -> str:
    """What to tell when writing ``path`` in the data dir failed with ``error``."""
    return (
        f"the backend cannot write {path} in its data dir ({error.strerror}); make the data dir writable for the user running the backend "
        "(or its file system read-write), or restart the backend with another --data-dir"
    )


def writable_private_dir(path: Path) -> Path:
    """:func:`make_private_dir`, then a probe file created and removed in ``path``. Raises
    :class:`DataDirUnwritable` when the OS refuses either (a full disk stays an OSError)."""
    try:
        make_private_dir(path)
        descriptor, probe = tempfile.mkstemp(prefix=".write-check-", dir=path)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        if is_unwritable(error):
            raise DataDirUnwritable(unwritable_message(path, error)) from None
        raise
    return path


def lock_data_dir(data_dir: Path, port: int) -> int:
    """Take the exclusive lock on ``data_dir`` for this process (listening on ``port``);
    returns the lock file's descriptor, to be kept open for the life of the server.
    Raises :class:`DataDirBusy` naming the holder when another server has it."""
    path = data_dir / LOCK_FILE
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(descriptor)
        os.close(descriptor)
        raise DataDirBusy(
            f"another poe-backend server (pid {holder.get('pid', '?')}, port {holder.get('port', '?')}) already uses data dir {data_dir}; "
            "stop it, or give this one another --data-dir"
        ) from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, json.dumps({"pid": os.getpid(), "port": port}).encode(), 0)
    return descriptor


def _read_holder(descriptor: int) -> dict:
    try:
        return json.loads(os.pread(descriptor, 4096, 0) or b"{}")
    except ValueError:
        return {}


def free_bytes(path: Path) -> int:
    """Bytes free for this user on the file system holding ``path``."""
    return shutil.disk_usage(path).free

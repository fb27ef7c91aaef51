"""Bearer-token auth: one random token per data directory, created on first start with
0600 permissions in the 0700 data directory, compared in constant time.

The token file is opened with ``O_NOFOLLOW`` (a planted symlink is refused, never followed
or chmod-ed) and created with ``O_EXCL`` (never written through an existing file). A token
that is a symlink, not a regular file, not ours, or readable by group or others is refused
with what to do: the server does not start.
"""

from __future__ import annotations

import errno
import hmac
import os
import secrets
import stat
from pathlib import Path

TOKEN_FILE = "token"


class TokenRefused(RuntimeError):
    """The token file is unsafe; the message says how to fix it."""


def load_or_create_token(data_dir: Path) -> str:
    """The token in ``data_dir/token`` (``data_dir`` must exist, 0700); created when missing."""
    path = data_dir / TOKEN_FILE
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return _create(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise TokenRefused(f"{path} is a symlink; remove it (rm {path}) and start again: a new token is created") from None
        raise
    with os.fdopen(descriptor, "r", encoding="utf-8") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            raise TokenRefused(f"{path} is not a regular file owned by this user; remove it and start again")
        if info.st_mode & 0o077:
            raise TokenRefused(f"{path} is readable by other users (mode {stat.S_IMODE(info.st_mode):o}): run `chmod 600 {path}`, or remove it for a new token")
        token = handle.read().strip()
    if not token:
        raise TokenRefused(f"{path} is empty; remove it and start again")
    return token


def _create(path: Path) -> str:
    token = secrets.token_urlsafe(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token


def token_matches(authorization: str | None, token: str) -> bool:
    """True when the ``Authorization`` header is ``Bearer <token>`` (constant-time compare)."""
    if not authorization:
        return False
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())

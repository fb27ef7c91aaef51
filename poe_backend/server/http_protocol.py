"""The HTTP protocol the service runs under uvicorn: uvicorn's httptools protocol with two
guards against connections that hold a file descriptor without asking anything.

uvicorn (0.55, both its httptools and its h11 protocol) closes an idle connection only
after a response: ``timeout_keep_alive`` is armed when a response completes and cancelled
by the next byte. A connection that sends nothing, or half a request's headers (after a
response too), stays open for ever, and uvicorn accepts connections until the process runs
out of file descriptors; past that, uvloop accepts and drops every new client. Its
``limit_concurrency`` does not help: it counts idle connections too, answers 503 only once
a request's headers have come, and the descriptor is spent by then.

* Header deadline: a connection has ``header_timeout_s`` to send a request's complete
  headers, counted from when it connected or when its previous response ended; then it is
  closed. The body has its own limits (:func:`poe_backend.server.uploads.limited_body`),
  and uvicorn's keep-alive timer still closes a connection idle after a response sooner.
* Connection cap: past ``max_connections`` open connections, a new one closes the
  connection that has waited longest for a request's headers (the new one itself when every
  other is being served), so idle connections never crowd out a client with a request to
  make. The default cap keeps the process under its open-files limit
  (:func:`default_max_connections`).

httptools is a dependency of this package (pyproject.toml), so this is the parser uvicorn's
``http="auto"`` would pick anyway. Use it as ``uvicorn.run(app, http=protocol(limits))``.
"""

from __future__ import annotations

import asyncio
import functools
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: File descriptors kept for everything but connections: the listening socket, the
#: data-dir lock, the job processes' pipes, the files uploads and jobs are writing.
RESERVED_DESCRIPTORS = 64
#: The cap when the open-files limit is unlimited or very large (a connection costs memory).
MOST_CONNECTIONS = 4096


def default_max_connections() -> int:
    """Open connections allowed under this process's open-files limit (``RLIMIT_NOFILE``,
    soft): half of what :data:`RESERVED_DESCRIPTORS` leaves, since a connection may hold a
    second descriptor (an output file it downloads); at most :data:`MOST_CONNECTIONS`.
    1024 (a common desktop default) gives 480."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MOST_CONNECTIONS
    return max(1, min(MOST_CONNECTIONS, (soft - RESERVED_DESCRIPTORS) // 2))


@dataclass(frozen=True)
class ConnectionLimits:
    """``header_timeout_s``: seconds a connection has to send a request's headers (default
    10, ``serve --header-timeout-s``; a client sends them in one piece of a few hundred
    bytes). ``max_connections``: open connections before the longest-waiting one is closed
    (default: :func:`default_max_connections`, read when the limits are made)."""

    header_timeout_s: float = 10.0
    max_connections: int = field(default_factory=default_max_connections)


def protocol(limits: ConnectionLimits) -> Callable[..., GuardedHttpProtocol]:
    """What to pass as uvicorn's ``http=``: makes a :class:`GuardedHttpProtocol` per
    connection (uvicorn calls it with its own keyword arguments)."""
    return functools.partial(GuardedHttpProtocol, limits=limits)


class GuardedHttpProtocol(HttpToolsProtocol):
    """One connection, under :class:`ConnectionLimits` (see the module's docstring)."""

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        #: Event-loop time since which this connection waits for a request's headers;
        #: None while a request is being served.
        self.waiting_since: float | None = None
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._wait_for_request()
        self._keep_under_cap()

    def on_headers_complete(self) -> None:
        self._stop_waiting()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Kept open and no pipelined request has its headers in: the next one gets the deadline.
        if self.cycle.response_complete and not self.transport.is_closing():
            self._wait_for_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def _wait_for_request(self) -> None:
        self.waiting_since = self.loop.time()
        self._header_deadline = self.loop.call_later(self.limits.header_timeout_s, self.transport.close)

    def _stop_waiting(self) -> None:
        self.waiting_since = None
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _keep_under_cap(self) -> None:
        """Past the cap, close the open connection that has waited longest for headers
        (this one is among them: it has just started waiting)."""
        if len(self.connections) <= self.limits.max_connections:
            return
        still_open = [connection for connection in self.connections if not connection.transport.is_closing()]
        if len(still_open) <= self.limits.max_connections:
            return
        waiting = [connection for connection in still_open if isinstance(connection, GuardedHttpProtocol) and connection.waiting_since is not None]
        oldest = min(waiting, key=lambda connection: connection.waiting_since)
        oldest._stop_waiting()
        oldest.transport.close()

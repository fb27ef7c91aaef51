"""Background threads for the add-on's waiting work (stdlib ``threading`` + ``queue``; no bpy).

Blender draws its UI on the main thread, and bpy may be touched only there; a
``bpy.app.timers`` callback that waits on HTTP freezes Blender for as long as the request
takes. So everything that waits (submissions and uploads, health and status polls, output
downloads, cancel requests, the backend start) is handed to :meth:`Worker.submit` as a
plain function, and what it returned (or the exception it raised) comes back through a
queue. The timer callback applies it with :meth:`Worker.apply_finished`, which never waits.

Up to :data:`MAX_THREADS` threads take the work from one queue, first submitted first
started, so one stuck request (a download may take 300 s, an upload 600 s, a status poll
5 s: the client's deadlines) does not hold up the others: it takes one thread and the
rest keep polling. The bound keeps a tracker following many jobs from opening a
connection per job at once; only :data:`MAX_THREADS` requests stuck together make the
next wait. Outcomes are applied in the order the work finished, which may differ from
the order it was submitted in: whoever submits two pieces of work that touch the same
state must not rely on their order. The tracker keeps at most one poll per job in flight,
and a cancel of that job may run beside it: the answer that comes last is not always the
newest, so a job record older than what its row shows is dropped
(:meth:`.jobs.JobTracker._outdated`). A thread exits as soon as the queue is empty and
:meth:`Worker.submit` starts one when there are fewer than :data:`MAX_THREADS`, so an
idle add-on (and a test's tracker) leaves no thread behind.
"""

from __future__ import annotations

import collections
import queue
import threading
from typing import Any, Callable

#: At most this many requests wait on the network at once (see the module docstring).
MAX_THREADS = 4

#: Runs on the main thread with what the work returned (None when it raised) and the
#: exception it raised (None when it returned).
Apply = Callable[[Any, "Exception | None"], None]


class Worker:
    """Runs ``work`` functions on up to :data:`MAX_THREADS` background threads; their
    outcomes wait for the main thread."""

    def __init__(self) -> None:
        self._requests: collections.deque[tuple[Callable[[], Any], Apply]] = collections.deque()
        self._finished: queue.Queue[tuple[Apply, Any, Exception | None]] = queue.Queue()
        self._lock = threading.Lock()
        self._threads = 0  # threads running; each takes work until the queue is empty
        self._unapplied = 0

    def submit(self, work: Callable[[], Any], apply: Apply) -> None:
        """Queue ``work`` (run on a worker thread); ``apply(value, error)`` is called by
        a later :meth:`apply_finished` on the caller's thread."""
        with self._lock:
            self._unapplied += 1
            self._requests.append((work, apply))
            if self._threads < MAX_THREADS:
                self._threads += 1
                threading.Thread(target=self._run, name="poe-addon-worker", daemon=True).start()

    @property
    def busy(self) -> bool:
        """True while some submitted work has not been applied yet."""
        return self._unapplied > 0

    def apply_finished(self) -> int:
        """Apply every outcome that is ready, in the order the work finished; returns how
        many. Never waits."""
        applied = 0
        while True:
            try:
                apply, value, error = self._finished.get_nowait()
            except queue.Empty:
                return applied
            with self._lock:
                self._unapplied -= 1
            apply(value, error)
            applied += 1

    def _run(self) -> None:
        while True:
            with self._lock:  # submit() queues under the lock, so no work is left without a thread
                if not self._requests:
                    self._threads -= 1
                    return
                work, apply = self._requests.popleft()
            try:
                value, error = work(), None
            except Exception as exception:  # noqa: BLE001 - handed to the main thread, which reports it
                value, error = None, exception
            self._finished.put((apply, value, error))

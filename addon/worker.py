"""A background thread for the add-on's waiting work (stdlib ``threading`` + ``queue``; no bpy).

Blender draws its UI on the main thread, and bpy may be touched only there; a
``bpy.app.timers`` callback that waits on HTTP freezes Blender for as long as the request
takes. So everything that waits (health and status polls, output downloads, cancel
requests) is handed to :meth:`Worker.submit` as a plain function, and what it returned (or
the exception it raised) comes back through a queue. The timer callback applies it with
:meth:`Worker.apply_finished`, which never waits.

One thread runs the work in submission order. It exits after :data:`IDLE_EXIT_S` seconds
without work and the next :meth:`Worker.submit` starts a new one, so an idle add-on (and a
test's tracker) leaves no thread behind.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

IDLE_EXIT_S = 5.0

#: Runs on the main thread with what the work returned (None when it raised) and the
#: exception it raised (None when it returned).
Apply = Callable[[Any, "Exception | None"], None]


class Worker:
    """Runs ``work`` functions on one background thread; their outcomes wait for the main thread."""

    def __init__(self) -> None:
        self._requests: queue.Queue[tuple[Callable[[], Any], Apply]] = queue.Queue()
        self._finished: queue.Queue[tuple[Apply, Any, Exception | None]] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._unapplied = 0

    def submit(self, work: Callable[[], Any], apply: Apply) -> None:
        """Queue ``work`` (run on the worker thread); ``apply(value, error)`` is called by
        a later :meth:`apply_finished` on the caller's thread."""
        with self._lock:
            self._unapplied += 1
            self._requests.put((work, apply))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="poe-addon-worker", daemon=True)
                self._thread.start()

    @property
    def busy(self) -> bool:
        """True while some submitted work has not been applied yet."""
        return self._unapplied > 0

    def apply_finished(self) -> int:
        """Apply every outcome that is ready, in order; returns how many. Never waits."""
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
            try:
                work, apply = self._requests.get(timeout=IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:  # submit() holds the lock while it queues, so nothing is stranded
                    if self._requests.empty():
                        self._thread = None
                        return
                continue
            try:
                value, error = work(), None
            except Exception as exception:  # noqa: BLE001 - handed to the main thread, which reports it
                value, error = None, exception
            self._finished.put((apply, value, error))

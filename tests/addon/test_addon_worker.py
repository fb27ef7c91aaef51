"""addon/worker.py: work runs off the calling thread, outcomes (values and exceptions) are
applied in order only when asked, and an idle worker leaves no thread behind."""

from __future__ import annotations

import threading
import time

from addon import worker as worker_module
from addon.worker import Worker


def _wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_outcomes_come_back_in_order_on_the_applying_thread():
    worker, applied = Worker(), []
    release = threading.Event()

    def fail():
        raise ValueError("boom")

    worker.submit(lambda: (release.wait(10), threading.current_thread().name)[1], lambda value, error: applied.append((value, error, threading.current_thread().name)))
    worker.submit(fail, lambda value, error: applied.append((value, error, threading.current_thread().name)))
    assert worker.apply_finished() == 0 and worker.busy  # the first work is still waiting
    release.set()
    _wait_until(lambda: worker._finished.qsize() == 2)
    assert applied == [] and worker.apply_finished() == 2 and not worker.busy
    (first_value, first_error, first_thread), (second_value, second_error, second_thread) = applied
    assert first_value == "poe-addon-worker" and first_error is None
    assert second_value is None and isinstance(second_error, ValueError) and str(second_error) == "boom"
    assert first_thread == second_thread == threading.current_thread().name


def test_an_idle_worker_stops_its_thread_and_starts_again(monkeypatch):
    monkeypatch.setattr(worker_module, "IDLE_EXIT_S", 0.05)
    worker, applied = Worker(), []
    worker.submit(lambda: 1, lambda value, error: applied.append(value))
    thread = worker._thread
    thread.join(timeout=10)
    assert not thread.is_alive() and worker._thread is None
    worker.submit(lambda: 2, lambda value, error: applied.append(value))
    _wait_until(lambda: worker._finished.qsize() == 2)
    worker.apply_finished()
    assert applied == [1, 2]

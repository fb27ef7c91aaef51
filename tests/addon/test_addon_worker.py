"""addon/worker.py: work runs off the calling thread on up to MAX_THREADS threads, so one
blocked piece does not hold up the next; outcomes (values and exceptions) are applied in
the order they finished, only when asked; an idle worker leaves no thread behind."""

from __future__ import annotations

import threading
import time

from addon.worker import MAX_THREADS, Worker


def _wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_blocked_work_does_not_hold_up_the_next_and_outcomes_come_back_as_they_finish():
    worker, applied = Worker(), []
    release = threading.Event()

    def fail():
        raise ValueError("boom")

    def record(value, error):
        applied.append((value, error, threading.current_thread().name))

    worker.submit(lambda: (release.wait(10), threading.current_thread().name)[1], record)
    worker.submit(fail, record)
    _wait_until(lambda: worker._finished.qsize() == 1, timeout=2)  # the second, while the first still waits
    assert applied == [] and worker.apply_finished() == 1 and worker.busy
    release.set()
    _wait_until(lambda: worker._finished.qsize() == 1)
    assert worker.apply_finished() == 1 and not worker.busy
    (second_value, second_error, second_thread), (first_value, first_error, first_thread) = applied
    assert second_value is None and isinstance(second_error, ValueError) and str(second_error) == "boom"
    assert first_value == "poe-addon-worker" and first_error is None
    assert first_thread == second_thread == threading.current_thread().name


def test_at_most_max_threads_run_and_the_next_work_waits_for_one():
    worker, applied = Worker(), []
    releases = [threading.Event() for _ in range(MAX_THREADS)]
    for index, release in enumerate(releases):
        worker.submit(lambda release=release, index=index: (release.wait(10), index)[1], lambda value, error: applied.append(value))
    worker.submit(lambda: "next", lambda value, error: applied.append(value))
    time.sleep(0.2)
    assert worker._threads == MAX_THREADS and worker._finished.qsize() == 0  # every thread is held
    releases[2].set()
    _wait_until(lambda: worker._finished.qsize() == 2)
    worker.apply_finished()
    assert applied == [2, "next"]
    for release in releases:
        release.set()
    _wait_until(lambda: worker._threads == 0)
    assert worker.apply_finished() == MAX_THREADS - 1 and not worker.busy


def test_an_idle_worker_stops_its_threads_and_starts_again():
    worker, applied = Worker(), []
    worker.submit(threading.current_thread, lambda value, error: applied.append(value))
    _wait_until(lambda: worker._finished.qsize() == 1)
    worker.apply_finished()
    (thread,) = applied
    thread.join(timeout=10)
    assert not thread.is_alive() and worker._threads == 0
    worker.submit(lambda: 2, lambda value, error: applied.append(value))
    _wait_until(lambda: worker._finished.qsize() == 1)
    worker.apply_finished()
    assert applied == [thread, 2]

"""The job store and its workers: one job process per device (:mod:`~poe_backend.server.worker`),
each fed by a thread of the server, all taking from one queue.

A job is a directory ``<data>/jobs/<id>/`` (0700) holding ``state.json`` (rewritten
atomically: temporary file + rename), ``request.json`` (what was asked), ``bundle/``
(uploaded bundles only; local ones are read in place), ``outputs/`` (the task's files and
result.json) and ``log.txt``. Each device runs one job at a time, in submission order;
the HTTP side only reads in-memory copies (and a running job's progress from the shared
memory its process writes) and never waits for a job. This process alone writes the state
files; job processes write outputs only.

Why a state file per job and not SQLite: outputs are files in the job's directory anyway,
so with the state inside it too a job is one directory and there is one source of truth.
Submission is atomic without a transaction: ``state.json`` is written last (rename), so a
job exists exactly when its state file does, and a directory without one is an unfinished
submission, removed at start; with SQLite a row and a directory could disagree after a
crash or a full disk. The data-dir lock (:mod:`poe_backend.server.datadir`) makes this
process the only writer, and retention deletes a directory. Listings and their pages come
from the in-memory index, so no file is read per request.

After a restart every job directory is read back: finished jobs are listed as they were,
a job that was running is marked failed (code ``interrupted``), and queued jobs are queued
again in their original order (they never started, so nothing is lost by running them).
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import queue
import secrets
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from poe_backend.bundle import FINISHED_STATES as FINISHED
from poe_backend.server.datadir import free_bytes, make_private_dir
from poe_backend.server.errors import InputError, JobFailure
from poe_backend.server.worker import DeviceWorker, JobOrder, WorkerStopped, torch_threads
from poe_backend.tasks import TASK_CLASSES
from poe_backend.tasks.base import RESULT_FILE

STATE_FILE = "state.json"
PERSIST_INTERVAL_S = 0.5
#: Characters of a prompt shown in a job listing entry (the job's own status has it all).
LISTED_PROMPT_CHARS = 200


@dataclass
class Job:
    """One job's state as served by ``GET /v1/jobs/{id}``. ``progress`` holds level,
    num_levels, step, t, nfe, ess, fraction (0..1), elapsed_s and eta_s; ``outputs`` maps
    output names to paths relative to the job's ``outputs/`` folder."""

    id: str
    task: str
    bundle_dir: str
    params: dict[str, Any]
    models: str
    bundle: dict[str, Any]
    state: str = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    progress: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    kind: str | None = None
    primary: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """The listing entry: the status without params, and the prompt cut to
        :data:`LISTED_PROMPT_CHARS` characters."""
        prompt = str(self.bundle.get("prompt") or "")
        cut = prompt[:LISTED_PROMPT_CHARS] + ("…" if len(prompt) > LISTED_PROMPT_CHARS else "")
        return {
            "id": self.id, "task": self.task, "state": self.state, "created": self.created, "started": self.started, "finished": self.finished,
            "progress": self.progress, "error": self.error, "kind": self.kind, "primary": self.primary, "prompt": cut,
        }


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(directory: Path) -> InputError:
    """507 naming the free space left where jobs are stored."""
    free = free_bytes(directory)
    message = f"the backend's disk is full ({free / 2**20:.1f} MiB free under its data dir); free space or delete finished jobs (DELETE /v1/jobs/<id>)"
    return InputError("bundle", message, code="insufficient_storage", status=507)


def new_job_id() -> str:
    """Sortable by creation time: ``YYYYmmdd-HHMMSS-<6 hex>``."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(temporary, path)


class JobStore:
    """All jobs, their directories, and the job processes (one per device) that run them."""

    def __init__(self, data_dir: Path, *, devices: list[str] | None = None, keep_jobs: int | None = None, keep_days: float | None = None) -> None:
        """``devices``: one worker per entry (``["cpu", "cpu"]`` runs two CPU jobs at once);
        ``keep_jobs``/``keep_days``: finished jobs beyond the newest N, or older than D
        days, are deleted at start and after each job (None keeps them)."""
        self.jobs_dir = make_private_dir(data_dir / "jobs")
        self.devices = devices or ["cpu"]
        self.keep_jobs, self.keep_days = keep_jobs, keep_days
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.workers = [DeviceWorker(device, torch_threads(len(self.devices))) for device in self.devices]
        self._running: dict[str, tuple[DeviceWorker, int]] = {}  # job id -> its worker, order seq
        self._order_seq = itertools.count(1)
        self._threads = [threading.Thread(target=self._work, args=(worker,), name=f"poe-job-worker-{index}-{worker.device}", daemon=True) for index, worker in enumerate(self.workers)]
        self._recover()
        self._apply_retention()

    # ---- directories and persistence -------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def _persist(self, job: Job) -> None:
        write_json_atomically(self.job_dir(job.id) / STATE_FILE, job.to_json())

    def _log(self, job_id: str, message: str) -> None:
        stamp = datetime.now(timezone.utc).strftime("%H:%M:%S")
        with open(self.job_dir(job_id) / "log.txt", "a", encoding="utf-8") as handle:
            handle.write(f"{stamp} {message}\n")

    def _recover(self) -> None:
        """Read every job back; directories without a state file (a submission cut off by
        a crash, kill -9 mid-upload or a full disk) are removed."""
        for directory in self.jobs_dir.iterdir():
            if not (directory / STATE_FILE).is_file():
                shutil.rmtree(directory, ignore_errors=True) if directory.is_dir() and not directory.is_symlink() else directory.unlink(missing_ok=True)
        pending = []
        for state_path in sorted(self.jobs_dir.glob(f"*/{STATE_FILE}")):
            try:
                job = Job(**json.loads(state_path.read_text(encoding="utf-8")))
            except (ValueError, TypeError) as error:
                print(f"poe-backend: skipping unreadable job state {state_path}: {error}")
                continue
            if job.state == "running":
                self._finish(job, "failed", JobFailure("interrupted", "the backend stopped while this job was running (restart or crash); submit it again"))
            elif job.state == "queued":
                pending.append(job)
            self._jobs[job.id] = job
        for job in sorted(pending, key=lambda job: job.created):
            self._log_quietly(job.id, "queued again after a backend restart")
            self._queue.put(job.id)

    # ---- the HTTP side ----------------------------------------------------------------
    def start(self) -> None:
        """Start the job processes and the threads that feed them."""
        for worker in self.workers:
            worker.start()
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """End the job processes. A running job is left as on a crash (its state file says
        running, so the next start marks it interrupted)."""
        for _ in self._threads:
            self._queue.put(None)
        for worker in self.workers:
            worker.stop()

    def loaded_models(self) -> list[list[str]]:
        """The models cached by each device's job process (as of its last job), in
        device order."""
        return [list(worker.loaded_models) for worker in self.workers]

    def prepare_dir(self, job_id: str) -> Path:
        """The new job's directory (0700), created before an upload is written into it."""
        return make_private_dir(self.job_dir(job_id))

    def submit(self, job: Job) -> dict[str, Any]:
        """Commit a job: its files, then ``state.json`` last; only then is it listed and
        queued. On any failure the directory is removed; a full disk is a 507."""
        directory = self.prepare_dir(job.id)
        try:
            (directory / "outputs").mkdir(mode=0o700, exist_ok=True)
            write_json_atomically(directory / "request.json", {"task": job.task, "bundle_dir": job.bundle_dir, "params": job.params, "models": job.models})
            self._log(job.id, f"queued task {job.task} on bundle {job.bundle_dir}")
            self._persist(job)
        except OSError as error:
            shutil.rmtree(directory, ignore_errors=True)
            if is_disk_full(error):
                raise disk_full_error(self.jobs_dir) from None
            raise
        with self._lock:
            self._jobs[job.id] = job
        self._queue.put(job.id)
        return job.to_json()

    def delete(self, job_id: str) -> bool | None:
        """Remove a finished job and its files: True; None when unknown; False when it is
        queued or running (cancel it first)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.state not in FINISHED:
                return False
            del self._jobs[job_id]
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        return True

    def _apply_retention(self) -> None:
        with self._lock:
            finished = sorted((job for job in self._jobs.values() if job.state in FINISHED), key=lambda job: job.created, reverse=True)
        cutoff = None if self.keep_days is None else time.time() - self.keep_days * 86400
        for rank, job in enumerate(finished):
            if (self.keep_jobs is not None and rank >= self.keep_jobs) or (cutoff is not None and (job.finished or job.created) < cutoff):
                self.delete(job.id)

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else self._current(job).to_json()

    def _current(self, job: Job) -> Job:
        """``job`` with the latest progress of its job process, when it runs (call with
        the lock held)."""
        running = self._running.get(job.id)
        if running is not None:
            worker, seq = running
            job.progress = worker.progress(seq) or job.progress
        return job

    def list(self, limit: int, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Listing entries (:meth:`Job.summary`) oldest first, ``limit`` of them from
        ``offset``; and the total number of jobs."""
        with self._lock:
            ordered = sorted(self._jobs.values(), key=lambda job: (job.created, job.id))
            return [self._current(job).summary() for job in ordered[offset : offset + limit]], len(ordered)

    def queue_length(self) -> int:
        with self._lock:
            return sum(job.state == "queued" for job in self._jobs.values())

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Queued jobs are cancelled at once; a running job stops at its next sampler step."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.state == "queued":
                self._finish(job, "cancelled", JobFailure("cancelled", "cancelled before it started"))
            elif job_id in self._running:
                worker, seq = self._running[job_id]
                worker.cancel(seq)
            return self._current(job).to_json()

    def output_path(self, job_id: str, name: str) -> Path | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or name not in job.outputs:
                return None
            return self.job_dir(job_id) / "outputs" / job.outputs[name]

    # ---- the worker -------------------------------------------------------------------
    def _finish(self, job: Job, state: str, failure: JobFailure | None = None) -> None:
        job.state, job.finished = state, time.time()
        job.error = None if failure is None else failure.to_json()
        self._persist_quietly(job)
        self._log_quietly(job.id, state if failure is None else f"{state}: [{failure.code}] {failure.message}")

    def _persist_quietly(self, job: Job) -> None:
        """Persist from a worker: a full disk must not kill the worker (the in-memory
        state stays right; the file catches up at the next write)."""
        try:
            self._persist(job)
        except OSError as error:
            print(f"poe-backend: could not write the state of job {job.id}: {error}", flush=True)

    def _log_quietly(self, job_id: str, message: str) -> None:
        try:
            self._log(job_id, message)
        except OSError:
            pass

    def _work(self, worker: DeviceWorker) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            with self._lock:
                job = self._jobs.get(job_id)
                if job is None or job.state != "queued":
                    continue
                seq = next(self._order_seq)
                job.state, job.started = "running", time.time()
                self._running[job_id] = (worker, seq)
                self._persist_quietly(job)
            self._log_quietly(job_id, f"running on {worker.device}")
            self._run(job, worker, seq)
            self._apply_retention()

    def _run(self, job: Job, worker: DeviceWorker, seq: int) -> None:
        """Run ``job`` in ``worker``'s process; its state file is rewritten every
        :data:`PERSIST_INTERVAL_S` while it runs (progress), and once at the end."""
        order = JobOrder(seq, job.id, job.task, TASK_CLASSES.get(job.task, ""), job.bundle_dir, job.params, job.models, str(self.job_dir(job.id) / "outputs"))

        def persist_progress() -> None:
            with self._lock:
                state = self._current(job).to_json()
            try:  # outside the lock: status reads never wait for the disk
                write_json_atomically(self.job_dir(job.id) / STATE_FILE, state)
            except OSError as error:
                print(f"poe-backend: could not write the state of job {job.id}: {error}", flush=True)

        try:
            outcome = worker.run(order, PERSIST_INTERVAL_S, persist_progress)
        except WorkerStopped:
            return
        if outcome.log:
            self._log_quietly(job.id, outcome.log)
        with self._lock:
            self._current(job)
            del self._running[job.id]
            if outcome.state == "done":
                job.outputs, job.kind, job.primary = {**outcome.outputs, RESULT_FILE: RESULT_FILE}, outcome.kind, outcome.primary
                if job.progress is not None:
                    job.progress = {**job.progress, "fraction": 1.0, "eta_s": 0.0}
            self._finish(job, outcome.state, outcome.failure)

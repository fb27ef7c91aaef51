"""The job store and its single worker thread.

A job is a directory ``<data>/jobs/<id>/`` holding ``state.json`` (rewritten atomically:
temporary file + rename), ``request.json`` (what was asked), ``bundle/`` (uploaded
bundles only; local ones are read in place), ``outputs/`` (the task's files and
result.json) and ``log.txt``. One worker runs jobs in submission order, so one device is
never shared; the HTTP side only reads in-memory copies and never waits for a job.

After a restart every job directory is read back: finished jobs are listed as they were,
a job that was running is marked failed (code ``interrupted``), and queued jobs are queued
again in their original order (they never started, so nothing is lost by running them).
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from poe_backend.bundle import read_bundle
from poe_backend.sampling import Progress, SamplingCancelled
from poe_backend.server.errors import JobFailure, describe_failure
from poe_backend.tasks import get_task
from poe_backend.tasks.base import RESULT_FILE, TaskContext

STATE_FILE = "state.json"
FINISHED = frozenset({"done", "failed", "cancelled"})
PERSIST_INTERVAL_S = 0.5
#: The scalar fields of sampler Progress reports that a job's status shows.
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


def new_job_id() -> str:
    """Sortable by creation time: ``YYYYmmdd-HHMMSS-<6 hex>``."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(temporary, path)


class ProgressMeter:
    """Turns sampler :class:`Progress` reports into a monotonic fraction and an ETA.
    Steps per level are learnt from the first level (the largest step index seen + 1)."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.steps_per_level = 1
        self.first_level: int | None = None
        self.fraction = 0.0

    def update(self, progress: Progress) -> dict[str, Any]:
        if self.first_level is None:
            self.first_level = progress.level
        if progress.level == self.first_level:
            self.steps_per_level = max(self.steps_per_level, progress.step + 1)
        within = min(1.0, (progress.step + 1) / self.steps_per_level)
        fraction = (progress.level - 1 + within) / max(1, progress.num_levels)
        self.fraction = min(1.0, max(self.fraction, fraction))
        elapsed = time.monotonic() - self.start
        eta = elapsed * (1.0 - self.fraction) / self.fraction if self.fraction > 0 else None
        return {**progress.summary(), "fraction": round(self.fraction, 4), "elapsed_s": round(elapsed, 2), "eta_s": None if eta is None else round(eta, 2)}


class JobStore:
    """All jobs, their directories and the worker that runs them."""

    def __init__(self, data_dir: Path, *, device: str = "cpu") -> None:
        self.jobs_dir = data_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.device = device
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._cancel_requested: set[str] = set()
        self._thread = threading.Thread(target=self._work, name="poe-job-worker", daemon=True)
        self._recover()

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
            self._log(job.id, "queued again after a backend restart")
            self._queue.put(job.id)

    # ---- the HTTP side ----------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> dict[str, Any]:
        directory = self.job_dir(job.id)
        (directory / "outputs").mkdir(parents=True, exist_ok=True)
        write_json_atomically(directory / "request.json", {"task": job.task, "bundle_dir": job.bundle_dir, "params": job.params, "models": job.models})
        with self._lock:
            self._jobs[job.id] = job
            self._persist(job)
        self._log(job.id, f"queued task {job.task} on bundle {job.bundle_dir}")
        self._queue.put(job.id)
        return job.to_json()

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else job.to_json()

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [job.to_json() for job in sorted(self._jobs.values(), key=lambda job: job.created)]

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
            elif job.state == "running":
                self._cancel_requested.add(job_id)
            return job.to_json()

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
        self._persist(job)
        self._log(job.id, state if failure is None else f"{state}: [{failure.code}] {failure.message}")

    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            with self._lock:
                job = self._jobs[job_id]
                if job.state != "queued":
                    continue
                job.state, job.started = "running", time.time()
                self._persist(job)
            self._log(job_id, f"running on {self.device}")
            self._run(job)

    def _run(self, job: Job) -> None:
        out_dir = self.job_dir(job.id) / "outputs"
        meter, last_write = ProgressMeter(), [0.0]

        def on_progress(progress: Progress) -> None:
            report = meter.update(progress)
            with self._lock:
                job.progress = report
                if time.monotonic() - last_write[0] > PERSIST_INTERVAL_S:
                    last_write[0] = time.monotonic()
                    self._persist(job)

        try:
            task = get_task(job.task)
            context = TaskContext(
                bundle=read_bundle(job.bundle_dir),
                params=task.Params.model_validate(job.params),
                out_dir=out_dir,
                models=job.models,
                device=self.device,
                callback=on_progress,
                should_stop=lambda: job.id in self._cancel_requested,
            )
            result = task.run(context)
            if not (out_dir / RESULT_FILE).is_file():
                result.write(out_dir)
            outputs = {name: str(path.relative_to(out_dir)) for name, path in result.outputs.items()}
            with self._lock:
                job.outputs, job.kind, job.primary = {**outputs, RESULT_FILE: RESULT_FILE}, result.kind, result.primary
                if job.progress is not None:
                    job.progress = {**job.progress, "fraction": 1.0, "eta_s": 0.0}
                self._finish(job, "done")
        except SamplingCancelled as error:
            with self._lock:
                self._finish(job, "cancelled", JobFailure("cancelled", f"cancelled by request ({error})"))
        except Exception as error:  # noqa: BLE001 - a failing job must never take the server down
            self._log(job.id, traceback.format_exc())
            _release_device_memory()
            with self._lock:
                self._finish(job, "failed", describe_failure(error, task=job.task, models=job.models))
        finally:
            self._cancel_requested.discard(job.id)


def _release_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()

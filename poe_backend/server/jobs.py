"""The job store and its workers: the workers an executor attaches (:mod:`~poe_backend.server.executor`;
by default one job process per device, :mod:`~poe_backend.server.worker`), each fed by a
thread of the server, all taking from one queue (:mod:`~poe_backend.server.scheduling`:
oldest first, preferring jobs whose models a worker holds).

A job is a directory ``<data>/jobs/<id>/`` (0700) holding ``state.json`` (rewritten
atomically: temporary file + rename), ``request.json`` (what was asked), ``bundle/``
(uploaded bundles only; local ones are read in place), ``outputs/`` (the task's files and
result.json) and ``log.txt``. Each worker runs one job at a time; the HTTP side only
reads in-memory copies (and a running job's progress from the shared memory its process
writes) and never waits for a job. This process alone writes the state
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
A state file is hostile input there (anyone with write access to the data dir, or a
restored backup, may have made it): a record that is not exactly what this module writes
(:func:`read_record`) is skipped with a line naming its file and field, every path stays
in its job's folder (ids have :func:`new_job_id`'s format and name their folder; outputs
resolve inside ``outputs/``), and a queued job runs only a bundle under the data dir or an
allowed root.

Workers come and go (a Ray cluster's GPUs join and leave): a job whose machine is lost
mid-run (:class:`~poe_backend.server.executor.NodeLost`) is queued again at its place
once (:data:`MAX_REQUEUES`, counted in its record's ``requeued``, noted ``node_lost`` in
its log); a second loss fails it with code ``node_lost``. A job no attached worker accepts
stays queued, its ``waiting`` field saying why.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import itertools
import json
import math
import os
import re
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from poe_backend.bundle import FINISHED_STATES as FINISHED
from poe_backend.server.datadir import free_bytes, is_unwritable, make_private_dir, unwritable_message, writable_private_dir
from poe_backend.server.errors import InputError, JobFailure
from poe_backend.server.executor import Executor, NodeLost, Worker
from poe_backend.server.scheduling import Attached, QueuedJob, Scheduler
from poe_backend.server.uploads import check_under_roots
from poe_backend.server.worker import JobOrder, LocalExecutor, WorkerStopped, torch_threads
from poe_backend.tasks import TASK_CLASSES
from poe_backend.tasks.base import RESULT_FILE

STATE_FILE = "state.json"
#: Seconds between checks of a running job's progress; its state file is rewritten only
#: when the progress changed since the last write. Status reads come from memory, and the
#: file's progress is read back only after a restart (which marks the job interrupted), so
#: it needs not be fresher: 2 s bounds a long job's state writes to one per 2 s.
PERSIST_INTERVAL_S = 2.0
#: Largest state file read back at start (bytes): a record is a few KiB (params are capped
#: at submission); a larger one is skipped unread.
MAX_STATE_BYTES = 1 << 20
JOB_STATES = frozenset({"queued", "running", *FINISHED})
#: :func:`new_job_id`'s format (the add-on checks the same one).
JOB_ID = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{6}")
#: Characters of a prompt shown in a job listing entry (the job's own status has it all).
LISTED_PROMPT_CHARS = 200
#: Times a job is queued again after the machine running it was lost; the next loss fails it.
MAX_REQUEUES = 1


@dataclass
class Job:
    """One job's state as served by ``GET /v1/jobs/{id}``. ``progress`` holds level,
    num_levels, step, t, nfe, ess, fraction (0..1), elapsed_s and eta_s; ``outputs`` maps
    output names to paths relative to the job's ``outputs/`` folder; ``waiting``, while it
    is queued, why no attached worker takes it (None when one does:
    :mod:`~poe_backend.server.scheduling`); ``requeued`` how often it was queued again after
    its machine was lost (at most :data:`MAX_REQUEUES`)."""

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
    waiting: str | None = None
    requeued: int = 0

    def to_json(self) -> dict[str, Any]:
        """The record as a dict, shallow: its nested dicts are the job's own, which the
        store only ever replaces whole, so the dict stays consistent once made (a deep
        copy was a sixth of a status request's server time: ``benchmarks/server_latency.py``)."""
        return dict(vars(self))

    def summary(self) -> dict[str, Any]:
        """The listing entry: the status without params, and the prompt cut to
        :data:`LISTED_PROMPT_CHARS` characters."""
        prompt = str(self.bundle.get("prompt") or "")
        cut = prompt[:LISTED_PROMPT_CHARS] + ("…" if len(prompt) > LISTED_PROMPT_CHARS else "")
        return {
            "id": self.id, "task": self.task, "state": self.state, "created": self.created, "started": self.started, "finished": self.finished,
            "progress": self.progress, "error": self.error, "kind": self.kind, "primary": self.primary, "prompt": cut, "waiting": self.waiting,
        }


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(directory: Path) -> InputError:
    """507 naming the free space left where jobs are stored."""
    free = free_bytes(directory)
    message = f"the backend's disk is full ({free / 2**20:.1f} MiB free under its data dir); free space or delete finished jobs (DELETE /v1/jobs/<id>)"
    return InputError("bundle", message, code="insufficient_storage", status=507)


def storage_error(error: OSError, data_dir: Path) -> InputError | None:
    """The answer to a submission whose write under ``data_dir`` failed: 507 when the disk
    is full; 503 when the OS refuses the write (permissions, a read-only file system),
    naming the path and what to do. None for any other error (the server's fault: 500) and
    for a refusal on a path outside ``data_dir`` (a local bundle, not the data dir)."""
    if is_disk_full(error):
        return disk_full_error(data_dir)
    if is_unwritable(error) and isinstance(error.filename, str) and Path(error.filename).is_relative_to(data_dir):
        return InputError("data_dir", unwritable_message(error.filename, error), code="data_dir_unwritable", status=503)
    return None


def new_job_id() -> str:
    """Sortable by creation time: ``YYYYmmdd-HHMMSS-<6 hex>``."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def is_job_id(text: Any) -> bool:
    """Whether ``text`` has :func:`new_job_id`'s format (so it names a folder of jobs/)."""
    return isinstance(text, str) and JOB_ID.fullmatch(text) is not None


def is_contained_path(text: str) -> bool:
    """Whether ``text`` is a relative path that stays in its folder: not empty, not
    absolute, no ``..`` part, no NUL (links are checked where the path is opened)."""
    return text != "" and "\0" not in text and not PurePosixPath(text).is_absolute() and ".." not in PurePosixPath(text).parts


class BadRecord(ValueError):
    """A state file that is not a job record of this backend; ``field`` names what is
    wrong (a field of :class:`Job`, or ``state.json`` for the file as a whole)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_object(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(key, str) for key in value)


def _is_text_map(value: Any) -> bool:
    return _is_object(value) and all(isinstance(item, str) for item in value.values())


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


#: Each field of :class:`Job`: the check of its value in a state file, and what it must be.
RECORD_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "id": (is_job_id, "a job id YYYYmmdd-HHMMSS-<6 hex>"),
    "task": (lambda value: isinstance(value, str), "a string"),
    "bundle_dir": (lambda value: isinstance(value, str) and "\0" not in value and PurePosixPath(value).is_absolute(), "an absolute path"),
    "params": (_is_object, "an object"),
    "models": (lambda value: isinstance(value, str), "a string"),
    "bundle": (_is_object, "an object"),
    "state": (lambda value: isinstance(value, str) and value in JOB_STATES, f"one of {', '.join(sorted(JOB_STATES))}"),
    "created": (_is_number, "a finite number (seconds since 1970)"),
    "started": (_optional(_is_number), "null or a finite number"),
    "finished": (_optional(_is_number), "null or a finite number"),
    "progress": (_optional(lambda value: _is_object(value) and all(item is None or _is_number(item) for item in value.values())), "null or an object of finite numbers and nulls"),
    "error": (_optional(_is_text_map), "null or an object of strings"),
    "outputs": (lambda value: _is_text_map(value) and all(is_contained_path(path) for path in value.values()), "an object of paths inside the outputs folder"),
    "kind": (_optional(lambda value: isinstance(value, str)), "null or a string"),
    "primary": (_optional(lambda value: isinstance(value, str)), "null or a string"),
    "waiting": (_optional(lambda value: isinstance(value, str)), "null or a string"),
    "requeued": (lambda value: type(value) is int and 0 <= value <= MAX_REQUEUES, f"an integer from 0 to {MAX_REQUEUES}"),
}


def parse_record(data: Any, folder: str) -> Job:
    """The :class:`Job` of a state file's JSON found in ``jobs/<folder>/``: every field as
    :data:`RECORD_FIELDS` wants it (those with defaults may be missing), none other, and
    the id equal to ``folder``. Raises :class:`BadRecord` naming the first bad field."""
    if not isinstance(data, dict):
        raise BadRecord(STATE_FILE, f"must be a JSON object, got {type(data).__name__}")
    for name, value in data.items():
        if name not in RECORD_FIELDS:
            raise BadRecord(name[:80], "is not a field of a job record")
        check, expected = RECORD_FIELDS[name]
        if not check(value):
            raise BadRecord(name, f"must be {expected}, got {json.dumps(value)[:80]}")
    for spec in fields(Job):
        if spec.name not in data and spec.default is MISSING and spec.default_factory is MISSING:
            raise BadRecord(spec.name, "is missing")
    if data["id"] != folder:
        raise BadRecord("id", f"{data['id']!r} is not the name of its folder {folder!r}")
    return Job(**data)


def read_record(directory: Path) -> Job:
    """The job of ``directory``'s state file: a regular file (not a link) of at most
    :data:`MAX_STATE_BYTES` holding JSON that :func:`parse_record` takes. Raises
    :class:`BadRecord` naming the field (``state.json`` for the file itself)."""
    try:
        descriptor = os.open(directory / STATE_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise BadRecord(STATE_FILE, f"cannot be opened ({error.strerror}; a link is refused)") from None
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise BadRecord(STATE_FILE, "is not a regular file")
        text = handle.read(MAX_STATE_BYTES + 1)
    if len(text) > MAX_STATE_BYTES:
        raise BadRecord(STATE_FILE, f"is larger than {MAX_STATE_BYTES >> 20} MiB")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as error:  # RecursionError: nesting too deep
        raise BadRecord(STATE_FILE, f"is not valid JSON ({error})") from None
    return parse_record(data, directory.name)


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(temporary, path)


class JobStore:
    """All jobs, their directories, the queue, and the workers that run them."""

    def __init__(
        self,
        data_dir: Path,
        *,
        devices: list[str] | None = None,
        executor: Executor | None = None,
        keep_jobs: int | None = None,
        keep_days: float | None = None,
        allowed_roots: Sequence[Path] = (),
    ) -> None:
        """``devices``: one worker per entry (``["cpu", "cpu"]`` runs two CPU jobs at once)
        for the default ``executor``, :class:`~poe_backend.server.worker.LocalExecutor`;
        ``executor``: what attaches workers instead (the Ray one);
        ``keep_jobs``/``keep_days``: finished jobs beyond the newest N, or older than D
        days, are deleted at start and after each job (None keeps them);
        ``allowed_roots``: folders besides ``data_dir`` whose bundles a queued job read
        back at start may run (``serve --allow-root``). Raises
        :class:`~poe_backend.server.datadir.DataDirUnwritable` when ``data_dir/jobs``
        cannot be written."""
        self.data_dir = data_dir
        self.roots = [data_dir, *allowed_roots]
        self.jobs_dir = writable_private_dir(data_dir / "jobs")
        self.devices = devices or ["cpu"]
        self.executor = executor or LocalExecutor(self.devices, torch_threads(len(self.devices)))
        self.keep_jobs, self.keep_days = keep_jobs, keep_days
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._scheduler = Scheduler()
        self._running: dict[str, tuple[Worker, int]] = {}  # job id -> its worker, order seq
        self._cancel_asked: set[str] = set()  # running jobs asked to stop
        self._order_seq = itertools.count(1)
        self._thread_numbers = itertools.count()
        self._recover()
        self._apply_retention()

    # ---- directories and persistence -------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        """``jobs/<job_id>``: a folder directly under jobs/, as ``job_id`` must have
        :func:`new_job_id`'s format (ValueError otherwise)."""
        if not is_job_id(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.jobs_dir / job_id

    def _persist(self, job: Job) -> None:
        write_json_atomically(self.job_dir(job.id) / STATE_FILE, job.to_json())

    def _log(self, job_id: str, message: str) -> None:
        stamp = datetime.now(timezone.utc).strftime("%H:%M:%S")
        with open(self.job_dir(job_id) / "log.txt", "a", encoding="utf-8", errors="backslashreplace") as handle:
            handle.write(f"{stamp} {message}\n")

    def _recover(self) -> None:
        """Read every job back. A job is a real directory of jobs/ with a state file; a
        directory without one (a submission cut off by a crash, kill -9 mid-upload or a
        full disk) is removed, and so is any entry that is no directory (a file; a link,
        never what it points at). A record :func:`read_record` refuses is skipped with a
        line naming its file and field, and left as it is; a queued job whose bundle is
        outside the roots fails (:meth:`_bundle_refusal`) instead of running."""
        pending = []
        for entry in sorted(self.jobs_dir.iterdir()):
            if entry.is_symlink() or not entry.is_dir() or not (entry / STATE_FILE).is_file():
                _remove_entry(entry)
                continue
            try:
                job = read_record(entry)
            except BadRecord as error:
                print(f"poe-backend: skipping the job record {entry / STATE_FILE}: {error}", flush=True)
                continue
            if job.state == "running":
                self._finish(job, "failed", JobFailure("interrupted", "the backend stopped while this job was running (restart or crash); submit it again"))
            elif job.state == "queued" and (refusal := self._bundle_refusal(job)) is not None:
                print(f"poe-backend: job {job.id}: {refusal.message}", flush=True)
                self._finish(job, "failed", refusal)
            elif job.state == "queued":
                pending.append(job)
            self._jobs[job.id] = job
        for job in sorted(pending, key=lambda job: job.created):
            self._log_quietly(job.id, "queued again after a backend restart")
            self._enqueue(job)

    def _bundle_refusal(self, job: Job) -> JobFailure | None:
        """Why a queued job read back at start must not run its ``bundle_dir``: it is not
        a folder under the data dir or an allowed root, as a submission is checked; None
        when it may run."""
        try:
            check_under_roots(job.bundle_dir, self.roots)
        except InputError as error:
            return JobFailure(error.code, f"not run after the backend's restart: {error.message}")
        except RuntimeError as error:  # Path.resolve meeting a link loop (Python 3.11)
            return JobFailure("outside_roots", f"not run after the backend's restart: its bundle {job.bundle_dir} cannot be resolved ({error})")
        return None

    # ---- the HTTP side ----------------------------------------------------------------
    def start(self) -> None:
        """Start the executor: each worker it attaches gets a thread that feeds it."""
        self.executor.start(self._attach, self._detach)

    def stop(self) -> None:
        """Stop feeding and stop the executor's workers. A running job is left as on a crash
        (its state file says running, so the next start marks it interrupted)."""
        self._scheduler.close()
        self.executor.stop()

    def _attach(self, worker: Worker) -> None:
        """Take ``worker`` (started) into the pool: a thread feeds it jobs from the queue."""
        attached = self._scheduler.attach(worker)
        name = f"poe-job-worker-{next(self._thread_numbers)}-{worker.node}-{worker.device}"
        threading.Thread(target=self._work, args=(attached,), name=name, daemon=True).start()

    def _detach(self, worker: Worker) -> None:
        """Take ``worker`` out of the pool: its thread ends after its current job."""
        self._scheduler.detach(worker)

    @property
    def workers(self) -> list[Worker]:
        """The attached workers, in the order they were attached (device order for the
        embedded executor); empty before :meth:`start` and while none is attached."""
        return self._scheduler.workers()

    def loaded_models(self) -> list[list[str]]:
        """The models cached by each attached worker (as of its last job), in
        :attr:`workers` order."""
        return [list(worker.loaded_models) for worker in self.workers]

    def prepare_dir(self, job_id: str) -> Path:
        """The new job's directory (0700), created before an upload is written into it."""
        return make_private_dir(self.job_dir(job_id))

    def submit(self, job: Job) -> dict[str, Any]:
        """Commit a job: its files, then ``state.json`` last; only then is it listed and
        queued. On any failure the directory is removed and the OSError raised (the HTTP
        side answers it with :func:`storage_error`)."""
        directory = self.prepare_dir(job.id)
        try:
            (directory / "outputs").mkdir(mode=0o700, exist_ok=True)
            write_json_atomically(directory / "request.json", {"task": job.task, "bundle_dir": job.bundle_dir, "params": job.params, "models": job.models})
            self._log(job.id, f"queued task {job.task} on bundle {job.bundle_dir}")
            self._persist(job)
        except OSError:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        with self._lock:
            self._jobs[job.id] = job
        self._enqueue(job)
        return job.to_json()

    def _enqueue(self, job: Job) -> None:
        order = JobOrder(0, job.id, job.task, TASK_CLASSES.get(job.task, ""), job.bundle_dir, job.params, job.models, str(self.job_dir(job.id) / "outputs"))
        self._scheduler.put(job, order)

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
        """The job's status (:meth:`Job.to_json`); None when unknown."""
        with self._lock:
            job = self._jobs.get(job_id)
            snapshot = None if job is None else self._snapshot(job)
        return None if snapshot is None else snapshot.to_json()

    def _current(self, job: Job) -> Job:
        """``job`` with the latest progress of its job process, when it runs (call with
        the lock held)."""
        running = self._running.get(job.id)
        if running is not None:
            worker, seq = running
            job.progress = worker.progress(seq) or job.progress
        return job

    def _snapshot(self, job: Job) -> Job:
        """A shallow copy of :meth:`_current` ``job`` (call with the lock held), to
        serialise after the lock is released: the store replaces a job's dict fields
        whole and never changes one in place, so the copy stays consistent, and the lock
        is held for no copy of params."""
        return copy.copy(self._current(job))

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
        """Queued jobs are cancelled at once; a running job stops at its next sampler step or
        checkpoint: within one model load, text encode, micro-batch or decode batch."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.state == "queued":
                self._finish(job, "cancelled", JobFailure("cancelled", "cancelled before it started"))
            elif job_id in self._running:
                worker, seq = self._running[job_id]
                self._cancel_asked.add(job_id)
                worker.cancel(seq)
            snapshot = self._snapshot(job)
        return snapshot.to_json()

    def output_path(self, job_id: str, name: str) -> Path | None:
        """The file of output ``name`` of job ``job_id``; None when either is unknown, or
        when the path does not resolve to a regular file inside the job's ``outputs/``
        (``..``, an absolute path, a link out of it)."""
        with self._lock:
            job = self._jobs.get(job_id)
            relative = None if job is None else job.outputs.get(name)
        if relative is None:
            return None
        outputs = (self.job_dir(job_id) / "outputs").resolve()
        path = (outputs / relative).resolve()
        return path if path.is_relative_to(outputs) and path.is_file() else None

    # ---- the worker -------------------------------------------------------------------
    def _finish(self, job: Job, state: str, failure: JobFailure | None = None) -> None:
        job.state, job.finished, job.waiting = state, time.time(), None
        job.error = None if failure is None else failure.to_json()
        self._persist_quietly(job)
        self._log_quietly(job.id, state if failure is None else f"{state}: [{failure.code}] {failure.message}")

    def _persist_quietly(self, job: Job) -> bool:
        """Persist from a worker; whether the file was written. A full disk or a
        read-only data dir must not kill the worker (the in-memory state stays right; the
        file catches up at the next write)."""
        try:
            self._persist(job)
        except OSError as error:
            print(f"poe-backend: could not write the state of job {job.id}: {error}", flush=True)
            return False
        return True

    def _log_quietly(self, job_id: str, message: str) -> None:
        try:
            self._log(job_id, message)
        except OSError:
            pass

    def _work(self, attached: Attached) -> None:
        """Feed ``attached``'s worker until it is detached or the store stops."""
        worker = attached.worker
        while (queued := self._scheduler.take(attached)) is not None:
            job = queued.job
            with self._lock:
                if job.state != "queued":  # cancelled meanwhile
                    continue
                seq = next(self._order_seq)
                job.state, job.started = "running", time.time()
                self._running[job.id] = (worker, seq)
                self._persist_quietly(job)
            self._log_quietly(job.id, f"running on {worker.node}/{worker.device}")
            self._run(queued, worker, seq)
            self._apply_retention()

    def _run(self, queued: QueuedJob, worker: Worker, seq: int) -> None:
        """Run ``queued``'s job on ``worker``. While it runs, its state file is rewritten
        when its progress changed, checked every :data:`PERSIST_INTERVAL_S`; once more at
        the end."""
        job = queued.job
        written = job.progress

        def persist_changed_progress() -> None:
            nonlocal written
            with self._lock:
                snapshot = self._snapshot(job)
            # outside the lock: status reads never wait for the disk
            if snapshot.progress != written and self._persist_quietly(snapshot):
                written = snapshot.progress

        try:
            outcome = worker.run(replace(queued.order, seq=seq), PERSIST_INTERVAL_S, persist_changed_progress)
        except WorkerStopped:
            return
        except NodeLost as error:
            self._after_node_lost(queued, error)
            return
        if outcome.log:
            self._log_quietly(job.id, outcome.log)
        with self._lock:
            self._current(job)
            self._end_run(job)
            if outcome.state == "done":
                job.outputs, job.kind, job.primary = {**outcome.outputs, RESULT_FILE: RESULT_FILE}, outcome.kind, outcome.primary
                if job.progress is not None:
                    job.progress = {**job.progress, "fraction": 1.0, "eta_s": 0.0}
            self._finish(job, outcome.state, outcome.failure)

    def _end_run(self, job: Job) -> bool:
        """Forget that ``job`` runs (call with the lock held); whether a cancel was asked."""
        del self._running[job.id]
        asked = job.id in self._cancel_asked
        self._cancel_asked.discard(job.id)
        return asked

    def _after_node_lost(self, queued: QueuedJob, error: NodeLost) -> None:
        """The machine running ``queued``'s job left: the job is queued again at its place
        when it was not before (:data:`MAX_REQUEUES`) and nobody asked to cancel it; else
        it ends, cancelled or failed with code ``node_lost``."""
        job = queued.job
        with self._lock:
            cancelled = self._end_run(job)
            again = not cancelled and job.requeued < MAX_REQUEUES
            if cancelled:
                self._finish(job, "cancelled", JobFailure("cancelled", f"cancelled by request; then its machine was lost ({error})"))
            elif not again:
                message = f"the machine running it was lost again ({error}); it was queued again {job.requeued} time(s) already: submit it again"
                self._finish(job, "failed", JobFailure("node_lost", message))
            else:
                job.requeued += 1
                job.state, job.started, job.progress = "queued", None, None
                self._persist_quietly(job)
                self._log_quietly(job.id, f"node_lost: {error}; queued again at its place")
        if again:
            self._scheduler.put_back(queued)


def _remove_entry(entry: Path) -> None:
    """Remove ``entry`` of jobs/: a real directory with everything in it; a file or a link
    itself (never what a link points at)."""
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            entry.unlink()

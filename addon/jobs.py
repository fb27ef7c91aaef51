"""Job tracking for the add-on in plain Python (no bpy), so tests drive it directly.

The UI registers a ``bpy.app.timers`` callback that calls :meth:`JobTracker.tick`; the
callback's return value (seconds until the next call, or None to stop) is tick's. All
network work runs on a :class:`.worker.Worker`: the submission (by path or as an upload),
the polls (each asks for one unfinished job's status and, once the job is done, brings
its outputs and result.json into ``<results_dir>/<job id>/``) and cancel requests. The
next tick applies each outcome to the job's row and hands the :class:`JobResult` to the
loader (which creates the image plane or movie strip) on the main thread. Neither
:meth:`JobTracker.submit` nor a tick waits on the network, and a tick never raises:
refusals, network trouble and loader errors end up in ``TrackedJob.message``.
"""

from __future__ import annotations

import itertools
import json
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

from .bundle_schema import FINISHED_STATES
from .job_view import progress_details
from .client import BackendError, BackendNotRunning, Client, checked_job_id
from .worker import Worker

POLL_INTERVAL_S = 0.5

#: The state of a row whose bundle is on its way to the backend (not a backend state).
SUBMITTING = "submitting"

#: Placeholder ids of rows still submitting, unique in this Blender: a tracker recreated
#: for a new URL or token takes over the rows of the one before.
_placeholder_ids = itertools.count(1)


@dataclass
class JobResult:
    """A finished job's files on this machine. ``kind`` is image|video|points; ``primary``
    the main file; ``manifest`` result.json; ``job`` the backend's job record (task,
    params, bundle summary: prompt, seed, frames, fps)."""

    job_id: str
    kind: str
    primary: Path
    outputs: dict[str, Path]
    manifest: dict[str, Any]
    job: dict[str, Any]


@dataclass
class TrackedJob:
    """What the panel shows for one job. ``state`` is the backend's, or :data:`SUBMITTING`
    while the bundle is still on its way (``job_id`` is then a placeholder,
    ``submit-<n>``, replaced by the backend's when the submission is answered).
    ``scene``: the scene its result goes into."""

    job_id: str
    task: str
    state: str = "queued"
    scene: str = ""
    progress: dict[str, Any] | None = None
    message: str = ""
    result: JobResult | None = None
    loaded: bool = False
    gave_up: bool = False
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES and (self.state != "done" or self.loaded or self.gave_up)

    def status_line(self) -> str:
        """One short line, e.g. ``toy2d running 40% level 4/10  NFE 37/58  ESS 51  ETA 3s``."""
        parts = [self.task, self.state]
        progress = self.progress or {}
        if self.state == "running" and progress:
            parts.append(f"{100 * progress.get('fraction', 0):.0f}%")
            parts.append(progress_details(progress))
        if self.message:
            parts.append(f"- {self.message}")
        return " ".join(str(part) for part in parts)


def provenance(result: JobResult) -> dict[str, Any]:
    """Custom properties stored on every datablock a result creates (``poe_*``): job id,
    task, prompt, seed, models and the parameters as JSON text."""
    job, manifest = result.job, result.manifest
    bundle = job.get("bundle") or {}
    params = job.get("params") or manifest.get("params") or {}
    seed = params.get("seed", bundle.get("seed", manifest.get("seed", 0)))
    return {
        "poe_job_id": result.job_id,
        "poe_task": job.get("task") or manifest.get("task", ""),
        "poe_prompt": bundle.get("prompt") or manifest.get("prompt", ""),
        "poe_seed": int(seed) if isinstance(seed, (int, float)) else 0,
        "poe_models": job.get("models") or manifest.get("models", ""),
        "poe_params": json.dumps(params, sort_keys=True),
        "poe_result": str(result.primary),
    }


def _job_record(answer: Any, what: str) -> dict[str, Any]:
    """``answer`` when it is a job record (a JSON object); BackendError otherwise, naming
    ``what`` was answered (a broken or hostile backend must not break the tick)."""
    if not isinstance(answer, dict):
        raise BackendError(f"the backend answered {what} with a {type(answer).__name__}, not a job")
    return answer


class JobTracker:
    """Submits bundles, follows jobs and hands finished results to ``loader``.

    Submissions, status polls, result fetches and cancel requests run on ``worker``;
    :meth:`submit` only queues one, and :meth:`tick` (the timer callback's work) only
    applies their outcomes, calls ``loader`` on this thread and queues the next polls, so
    neither waits on the network."""

    def __init__(self, client: Client, results_dir: str | Path, loader: Callable[[JobResult], None] | None = None, worker: Worker | None = None) -> None:
        self.client = client
        self.results_dir = Path(results_dir)
        self.loader = loader
        self.worker = worker or Worker()
        self.jobs: dict[str, TrackedJob] = {}
        self._polling: set[str] = set()  # job ids with a poll on the worker

    def submit(self, bundle_dir: str | Path, *, task: str | None = None, params: dict[str, Any] | None = None, models: str | None = None, scene: str = "") -> TrackedJob:
        """Submit and follow a bundle without waiting: the row returned is
        :data:`SUBMITTING` at once (a placeholder id) and the worker sends the bundle
        (:meth:`.client.Client.submit`: by path to a backend on this machine, as an upload
        to a remote one or when the backend refuses the path). The tick that applies the
        answer makes the row the backend's job (the same object, its id replaced) or fails
        it with the reason: the backend's message, its ``field`` in ``record["error"]``."""
        tracked = TrackedJob(job_id=f"submit-{next(_placeholder_ids)}", task=task or "", state=SUBMITTING, scene=scene)
        self.jobs[tracked.job_id] = tracked
        self.worker.submit(partial(self._send, bundle_dir, task=task, params=params, models=models), partial(self._apply_submitted, tracked))
        return tracked

    def _send(self, bundle_dir: str | Path, **submission: Any) -> dict[str, Any]:
        """Worker thread: submit the bundle; the answer must be a job record whose id has
        the backend's format (it becomes the row's key and, later, a folder name):
        BackendError otherwise."""
        record = _job_record(self.client.submit(bundle_dir, **submission), "the submission")
        checked_job_id(record)
        return record

    def _apply_submitted(self, tracked: TrackedJob, record: dict[str, Any] | None, error: Exception | None) -> None:
        if error is not None:
            message = getattr(error, "message", f"{type(error).__name__}: {error}")
            tracked.state, tracked.message = "failed", f"not submitted: {message}"
            tracked.record = {"error": {"message": message, "code": getattr(error, "code", None), "field": getattr(error, "field", None)}}
            return
        self._rename(tracked, record["id"])
        self._update(tracked, record)

    def _rename(self, tracked: TrackedJob, job_id: str) -> None:
        """Give ``tracked`` the backend's ``job_id`` in place of its placeholder; its row
        keeps its place in :attr:`jobs` (the panel's order is the order of submission)."""
        rows = list(self.jobs.items())
        self.jobs.clear()
        self.jobs.update((job_id if row is tracked else key, row) for key, row in rows)
        tracked.job_id = job_id

    def track(self, record: dict[str, Any], *, scene: str = "") -> TrackedJob:
        """Follow a job the backend already knows (e.g. after reopening Blender)."""
        tracked = TrackedJob(job_id=record["id"], task=record.get("task", ""), state=record.get("state", "queued"), scene=scene, record=record)
        self.jobs[tracked.job_id] = tracked
        return tracked

    def cancel(self, job_id: str) -> None:
        """Ask the backend to cancel ``job_id``; a later tick shows its answer."""
        tracked = self.jobs.setdefault(job_id, TrackedJob(job_id, ""))
        self.worker.submit(partial(self._request_cancel, job_id), partial(self._apply_cancel, tracked))

    def _request_cancel(self, job_id: str) -> dict[str, Any]:
        """Worker thread: ``POST /v1/jobs/{id}/cancel``; the job's record."""
        return _job_record(self.client.cancel(job_id), "the cancel request")

    def reload(self, job_id: str) -> TrackedJob:
        """Bring a done job's result in again (it replaces what it created before), by the
        path every finished job takes: the next ticks poll it and call the loader."""
        tracked = self.jobs.get(job_id) or self.track({"id": job_id})
        tracked.loaded = tracked.gave_up = False
        return tracked

    def active(self) -> list[TrackedJob]:
        """Jobs the backend runs and this tracker polls (not those still submitting)."""
        return [job for job in self.jobs.values() if not job.finished and job.state != SUBMITTING]

    def tick(self) -> float | None:
        """Apply what the worker finished, then queue one poll for each active job that
        has none under way; returns the delay until the next tick, None when no job is
        unfinished (submissions included). Never waits on the network and never raises."""
        self.worker.apply_finished()
        for tracked in self.active():
            if tracked.job_id not in self._polling:
                self._polling.add(tracked.job_id)
                self.worker.submit(partial(self._poll, tracked.job_id, tracked.result), partial(self._apply_poll, tracked))
        return POLL_INTERVAL_S if any(not job.finished for job in self.jobs.values()) else None

    def _poll(self, job_id: str, result: JobResult | None) -> tuple[dict[str, Any], JobResult | None, Exception | None]:
        """Worker thread: the job's status and, once it is done, its result (fetched once:
        ``result`` is the one already here). A failed fetch is returned, not raised, so
        the status still reaches the panel."""
        record = _job_record(self.client.job(job_id), "the status request")
        if record.get("state") != "done" or result is not None:
            return record, result, None
        try:
            return record, self.fetch_result(record), None
        except Exception as error:  # noqa: BLE001 - shown in the panel by _deliver
            return record, None, error

    def _apply_poll(self, tracked: TrackedJob, outcome: tuple[dict[str, Any], JobResult | None, Exception | None] | None, error: Exception | None) -> None:
        self._polling.discard(tracked.job_id)
        if isinstance(error, BackendNotRunning):
            tracked.message = error.message  # keeps polling: the backend may come back
        elif isinstance(error, BackendError):
            tracked.state, tracked.message = "failed", error.message
        elif error is not None:
            tracked.message = f"could not read the job's status: {type(error).__name__}: {error}"
        else:
            record, result, fetch_error = outcome
            if self._outdated(tracked, record):
                return
            tracked.message = ""
            self._update(tracked, record)
            if tracked.state == "done" and not tracked.loaded:
                self._deliver(tracked, result, fetch_error)

    def _apply_cancel(self, tracked: TrackedJob, record: dict[str, Any] | None, error: Exception | None) -> None:
        if error is not None:
            tracked.message = f"could not cancel: {getattr(error, 'message', error)}"
        elif not self._outdated(tracked, record):
            self._update(tracked, record)

    @staticmethod
    def _outdated(tracked: TrackedJob, record: dict[str, Any]) -> bool:
        """True when ``record`` is older than what the row shows: the backend never takes a
        job out of a finished state, so an unfinished record for a finished row is the
        answer to a request sent before (a poll and a cancel of one job run at once on the
        worker and may be answered in either order). It is dropped, not shown."""
        return tracked.state in FINISHED_STATES and record.get("state") not in FINISHED_STATES

    def _update(self, tracked: TrackedJob, record: dict[str, Any]) -> None:
        tracked.record, tracked.state, tracked.progress = record, record.get("state", tracked.state), record.get("progress")
        tracked.task = tracked.task or record.get("task", "")
        if tracked.state in ("failed", "cancelled"):
            error = record.get("error") or {}
            tracked.message = error.get("message", tracked.state)

    def _deliver(self, tracked: TrackedJob, result: JobResult | None, error: Exception | None) -> None:
        """Main thread: hand a fetched result to the loader, or say why there is none."""
        if isinstance(error, BackendNotRunning):
            tracked.message = f"could not download the result yet: {error.message}"
            return
        if isinstance(error, BackendError):
            tracked.message, tracked.gave_up = f"could not download the result: {error.message}", True
            return
        if error is not None:
            tracked.message, tracked.gave_up = f"could not load the result: {type(error).__name__}: {error}", True
            return
        tracked.result = result
        try:
            if self.loader is not None:
                self.loader(result)
            tracked.loaded = True
        except Exception as error:  # noqa: BLE001 - shown in the panel, never a traceback in a timer
            tracked.message, tracked.gave_up = f"could not load the result: {type(error).__name__}: {error}", True

    def fetch_result(self, record: dict[str, Any]) -> JobResult:
        """A done job's outputs in ``<results_dir>/<job id>/`` (hard-linked from the job's
        folder when the backend is on this machine, downloaded otherwise) and its
        result.json read. Waits on disk and network: call it off the main thread."""
        directory = self.results_dir / checked_job_id(record)
        outputs = self.client.fetch_outputs(record, directory)
        manifest = json.loads(outputs["result.json"].read_text(encoding="utf-8"))
        primary = outputs[record.get("primary") or manifest["primary"]]
        return JobResult(record["id"], record.get("kind") or manifest.get("kind", "image"), primary, outputs, manifest, record)

    def wait(self, timeout: float, sleep: Callable[[float], None] = time.sleep) -> None:
        """Tick until nothing is active or ``timeout`` seconds pass (headless use)."""
        deadline = time.monotonic() + timeout
        while (delay := self.tick()) is not None and time.monotonic() < deadline:
            sleep(delay)


DEFAULT_DATA_DIR = Path.home() / ".local" / "share" / "poe-backend"


def token_path_from_command(command_line: str) -> Path:
    """Where a backend started by ``command_line`` keeps its token: ``--data-dir DIR``
    (or ``--data-dir=DIR``) + ``/token``, else the serve command's default data dir."""
    arguments = shlex.split(command_line)
    for index, argument in enumerate(arguments):
        if argument == "--data-dir" and index + 1 < len(arguments):
            return Path(arguments[index + 1]).expanduser() / "token"
        if argument.startswith("--data-dir="):
            return Path(argument.split("=", 1)[1]).expanduser() / "token"
    return DEFAULT_DATA_DIR / "token"


def start_backend(command_line: str, client: Client, log_path: str | Path, *, timeout: float = 120.0) -> subprocess.Popen:
    """Run the preferences' command line (e.g. ``poe-backend serve --port 7860``), its
    output going to ``log_path``, and wait until ``/v1/health`` answers; raises
    :class:`BackendError` (with the log's last line) if it exits or times out."""
    arguments = shlex.split(command_line)
    if not arguments:
        raise BackendError("the backend start command in the preferences is empty")
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log_path, "ab") as log:
            process = subprocess.Popen(arguments, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    except OSError as error:
        raise BackendError(f"could not run {arguments[0]!r}: {error}") from None
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            lines = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            raise BackendError(f"the backend exited with code {process.returncode}: {lines[-1] if lines else 'no output'} (log: {log_path})")
        try:
            client.health()
            return process
        except BackendNotRunning:
            if time.monotonic() > deadline:
                process.terminate()
                raise BackendError(f"the backend did not answer at {client.url} within {timeout:.0f} s") from None
            time.sleep(0.25)

"""One job process per device: jobs run outside the server's process.

Why a process and not a thread: a job's Python (the sampler loop, the task's glue) holds
the GIL for long stretches and torch's intra-op threads take every core, so a job run in a
thread of the server starved the event loop (concurrent status requests waited several
times longer with a toy job running than idle: ``benchmarks/server_latency.py``, figures in
README.md, Measurements). In a process of its own a job shares neither the GIL nor the
server's threads, and each device's model cache
(:data:`~poe_backend.runtime.cache.MODEL_CACHE`) is that process's own: two workers
never see, move or evict each other's models. A crash of the job process (a segfault, the
OOM killer) fails that job and starts a fresh process; the server lives on.

This is the embedded executor (:class:`LocalExecutor`, the default; the protocol is
:mod:`~poe_backend.server.executor`'s): one :class:`DeviceWorker` per device, attached at
start. The server side (:class:`DeviceWorker`) sends a :class:`JobOrder` through a pipe and waits
for one :class:`JobOutcome`. Three small pieces of shared memory carry the rest without
messages: the latest progress report (written by the job at every sampler step, read by
the server only when a client asks for the job's status), the number of the job to
cancel (read by the job's ``should_stop`` at every sampler step and every checkpoint: a
model load, text encode, micro-batch or decode batch) and the device's free and total memory (read by the job process at its start and
after every job, for ``/health``: the server process never makes a CUDA context). Job processes start with the ``spawn`` method (a fresh interpreter: no copied locks
or CUDA state), ignore SIGINT (the server stops them) and exit when the server dies. As
with any ``spawn`` child, a script that runs the app in-process (``uvicorn.run(create_app(
...))``) must do so under ``if __name__ == "__main__":``: the child imports the script.
"""

from __future__ import annotations

import importlib
import math
import multiprocessing
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

from poe_backend.server.errors import JobFailure

#: The progress report's fields, in their shared-memory order (``ess``, ``eta_s``: NaN
#: stands for None).
PROGRESS_FIELDS = ("level", "num_levels", "step", "t", "nfe", "planned_nfe", "forwards", "planned_forwards", "ess", "fraction", "elapsed_s", "eta_s")
INTEGER_FIELDS = frozenset({"level", "num_levels", "step", "nfe", "planned_nfe", "forwards", "planned_forwards"})
#: Seconds between checks that the server process is still alive (a job process whose
#: server was killed exits within this time).
PARENT_CHECK_S = 1.0
#: Seconds a job process gets to exit after it is asked to stop, before it is killed.
STOP_GRACE_S = 5.0


def torch_threads(workers: int) -> int:
    """Intra-op threads for each of ``workers`` job processes: this machine's CPUs less
    one left to the server, shared out; at least 1. ``OMP_NUM_THREADS``, when set, wins."""
    return max(1, ((os.cpu_count() or 1) - 1) // max(1, workers))


@dataclass(frozen=True)
class JobOrder:
    """What a job process runs: ``seq`` numbers the order (unique per worker, > 0; 0 in
    the order a queued job shows :meth:`DeviceWorker.refusal`, before it is taken);
    ``task_path`` is the task class as ``"module:ClassName"``; ``params`` the validated
    parameters as JSON; ``out_dir`` an existing folder for the outputs."""

    seq: int
    job_id: str
    task: str
    task_path: str
    bundle_dir: str
    params: dict[str, Any]
    models: str
    out_dir: str


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended: ``state`` done / cancelled / failed; for done, ``outputs`` (name ->
    path relative to the outputs folder), ``kind`` and ``primary``; otherwise ``failure``;
    ``log`` text for the job's log (a traceback); ``loaded_models``: the job process's
    cached models afterwards."""

    state: str
    failure: JobFailure | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    kind: str | None = None
    primary: str | None = None
    log: str | None = None
    loaded_models: list[str] = field(default_factory=list)


class WorkerStopped(RuntimeError):
    """The job process was ended by :meth:`DeviceWorker.stop` (the server is shutting
    down): the job it ran has no outcome."""


class DeviceWorker:
    """The server's handle on one device's job process (started by :meth:`start`): the
    embedded executor's :class:`~poe_backend.server.executor.Worker`."""

    node = "local"

    def __init__(self, device: str, threads: int) -> None:
        self.device, self.threads = device, threads
        self._context = multiprocessing.get_context("spawn")
        self._progress = self._context.Array("d", 1 + len(PROGRESS_FIELDS))  # [seq, *fields]
        self._cancel_seq = self._context.RawValue("q", 0)
        self._memory = self._context.RawArray("d", [math.nan, math.nan])  # free, total VRAM bytes
        self._process: multiprocessing.process.BaseProcess | None = None
        self._connection: Connection | None = None
        self._stopping = False
        self._running_job: str | None = None  # the id of the job it runs
        self.loaded_models: list[str] = []

    def start(self) -> None:
        """Start the job process (it imports torch and the tasks while the server goes on)."""
        ours, theirs = self._context.Pipe()
        self._process = self._context.Process(
            target=serve_jobs, args=(self.device, self.threads, theirs, self._progress, self._cancel_seq, self._memory, os.getpid()), name=f"poe-job-{self.device}", daemon=True
        )
        self._process.start()
        theirs.close()
        self._connection = ours

    def device_memory(self) -> tuple[int | None, int | None]:
        """Free and total bytes of this worker's CUDA device as its job process last read
        them (at its start and after every job); None off CUDA or before the first read.
        The server process never touches CUDA itself: a context there would hold memory
        of the first card (:data:`~poe_backend.runtime.planner.CUDA_CONTEXT_BYTES`) that the
        jobs' memory planner then lacks."""
        free, total = self._memory[:]
        return (None, None) if math.isnan(free) else (int(free), int(total))

    def refusal(self, order: JobOrder) -> str | None:
        """None: a device of this machine runs every job (the server checked its weights'
        preset and its cost at submit; a job that does not fit fails with advice)."""
        return None

    def describe(self) -> dict[str, Any]:
        """``/v1/health``'s entry: node, device, memory (bytes, None off CUDA), the models
        its process holds and ``state`` (``idle`` or the id of the job it runs)."""
        free, total = self.device_memory()
        return {"node": self.node, "device": self.device, "memory_free": free, "memory_total": total, "loaded_models": list(self.loaded_models), "state": self._running_job or "idle"}

    def run(self, order: JobOrder, wait_s: float, on_wait: Callable[[], None]) -> JobOutcome:
        """Run ``order`` in the job process and return its outcome, calling ``on_wait``
        every ``wait_s`` seconds meanwhile. When the process dies the job fails (code
        ``worker_died``) and a fresh process is started for the next job; raises
        :class:`WorkerStopped` when :meth:`stop` ended it."""
        assert self._connection is not None, "start() first"
        self._running_job = order.job_id
        try:
            self._connection.send(order)
            while not self._connection.poll(wait_s):
                on_wait()
            outcome = self._connection.recv()
        except (EOFError, OSError):
            if self._stopping:
                raise WorkerStopped(self.device) from None
            return self._restart_after_death()
        finally:
            self._running_job = None
        self.loaded_models = outcome.loaded_models
        return outcome

    def _restart_after_death(self) -> JobOutcome:
        assert self._process is not None
        self._process.join(timeout=STOP_GRACE_S)
        code = self._process.exitcode
        self.loaded_models = []
        self.start()
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        message = (
            f"the job process on {self.device} {how} (out of host memory, or a crash in a native library); "
            "the backend started a new one: submit again, perhaps with params preset: 'preview'"
        )
        return JobOutcome("failed", JobFailure("worker_died", message))

    def progress(self, seq: int) -> dict[str, Any] | None:
        """The latest progress report of job ``seq`` (None before its first step, or
        after :meth:`stop`)."""
        if self._progress is None:
            return None
        with self._progress.get_lock():
            values = self._progress[:]
        if values[0] != seq:
            return None
        return decode_progress(values[1:])

    def cancel(self, seq: int) -> None:
        """Ask job ``seq`` to stop at its next sampler step or checkpoint (a model load, text
        encode, micro-batch or decode batch; ignored once it has ended)."""
        self._cancel_seq.value = seq

    def stop(self) -> None:
        """End the job process (SIGTERM, then SIGKILL after :data:`STOP_GRACE_S`); a job
        it was running ends without an outcome."""
        self._stopping = True
        if self._process is None:
            return
        self._process.terminate()
        self._process.join(timeout=STOP_GRACE_S)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        # Unlink the progress lock's named semaphore now: uvicorn ends the server by
        # re-raising SIGTERM, so multiprocessing's exit-time cleanup never runs.
        self._progress = None


class LocalExecutor:
    """The embedded executor (the default): one :class:`DeviceWorker` per entry of
    ``devices`` (a name may repeat: ``["cpu", "cpu"]`` runs two CPU jobs at once), each
    with ``threads`` intra-op threads, started and attached at :meth:`start` in device
    order and never detached."""

    def __init__(self, devices: list[str], threads: int) -> None:
        self.workers = [DeviceWorker(device, threads) for device in devices]

    def start(self, attach: Callable[[DeviceWorker], None], detach: Callable[[DeviceWorker], None]) -> None:
        """Start every job process and attach its worker (the processes load meanwhile)."""
        for worker in self.workers:
            worker.start()
            attach(worker)

    def stop(self) -> None:
        """End every job process."""
        for worker in self.workers:
            worker.stop()


def encode_progress(report: dict[str, Any]) -> list[float]:
    return [math.nan if report.get(name) is None else float(report[name]) for name in PROGRESS_FIELDS]


def decode_progress(values: list[float]) -> dict[str, Any]:
    return {name: None if math.isnan(value) else int(value) if name in INTEGER_FIELDS else value for name, value in zip(PROGRESS_FIELDS, values)}


# ---- inside the job process -------------------------------------------------------------
def serve_jobs(device: str, threads: int, connection: Connection, progress: Any, cancel_seq: Any, memory: Any, server_pid: int) -> None:
    """The job process's main loop: run each :class:`JobOrder` received and answer its
    :class:`JobOutcome`; return when the server closes the pipe or is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_server, args=(server_pid,), name="poe-job-watchdog", daemon=True).start()
    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(threads)
    while True:
        _report_device_memory(device, memory)
        try:
            order = connection.recv()
        except EOFError:
            return
        connection.send(run_order(order, device, progress, cancel_seq))


def _report_device_memory(device: str, memory: Any) -> None:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        memory[:] = [float(value) for value in torch.cuda.mem_get_info(torch.device(device))]


def _exit_with_server(server_pid: int) -> None:
    while os.getppid() == server_pid:
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


def run_order(order: JobOrder, device: str, progress: Any, cancel_seq: Any) -> JobOutcome:
    """Run one job: the task's progress goes to ``progress`` ([seq, *fields]), and once
    ``cancel_seq`` holds ``order.seq`` it stops at its next sampler step or checkpoint
    (:func:`~poe_backend.tasks.base.job_entry`): within one model load, text encode,
    micro-batch of an expert evaluation or decode batch."""
    from poe_backend.bundle import read_bundle
    from poe_backend.runtime.cache import MODEL_CACHE
    from poe_backend.sampling import Progress, SamplingCancelled
    from poe_backend.server.errors import describe_failure
    from poe_backend.tasks.base import RESULT_FILE, TaskContext

    meter = ProgressMeter()

    def on_progress(report: Progress) -> None:
        values = [float(order.seq), *encode_progress(meter.update(report))]
        with progress.get_lock():
            progress[:] = values

    out_dir = Path(order.out_dir)
    try:
        module_name, class_name = order.task_path.split(":")
        task = getattr(importlib.import_module(module_name), class_name)()
        context = TaskContext(
            bundle=read_bundle(order.bundle_dir),
            params=task.Params.model_validate(order.params),
            out_dir=out_dir,
            models=order.models,
            device=device,
            callback=on_progress,
            should_stop=lambda: cancel_seq.value == order.seq,
        )
        result = task.run(context)
        if not (out_dir / RESULT_FILE).is_file():
            result.write(out_dir)
        outputs = {name: str(path.relative_to(out_dir)) for name, path in result.outputs.items()}
        return JobOutcome("done", outputs=outputs, kind=result.kind, primary=result.primary, loaded_models=MODEL_CACHE.loaded_models())
    except SamplingCancelled as error:
        return JobOutcome("cancelled", JobFailure("cancelled", f"cancelled by request ({error})"), loaded_models=MODEL_CACHE.loaded_models())
    except Exception as error:  # noqa: BLE001 - a failing job must never take the worker down
        log = traceback.format_exc()
        _release_device_memory()
        return JobOutcome("failed", describe_failure(error, task=order.task, models=order.models), log=log, loaded_models=MODEL_CACHE.loaded_models())


def _release_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class ProgressMeter:
    """Turns sampler :class:`~poe_backend.sampling.Progress` reports into a monotonic
    fraction (0..1) and an ETA (seconds). The fraction is ``forwards / planned_forwards``
    (network forward-equivalents: true CFG's two passes and a conditioning term's backward
    counted) when the report carries the run's planned cost (every task's sampler run
    does), else ``nfe / planned_nfe``, else it is
    counted in levels, with the steps per level learnt from the first level (the largest
    step index seen + 1)."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.steps_per_level = 1
        self.first_level: int | None = None
        self.fraction = 0.0

    def update(self, progress: Any) -> dict[str, Any]:
        if progress.planned_forwards:
            fraction = progress.forwards / progress.planned_forwards
        else:
            fraction = progress.nfe / progress.planned_nfe if progress.planned_nfe else self._level_fraction(progress)
        self.fraction = min(1.0, max(self.fraction, fraction))
        elapsed = time.monotonic() - self.start
        eta = elapsed * (1.0 - self.fraction) / self.fraction if self.fraction > 0 else None
        return {**progress.summary(), "fraction": round(self.fraction, 4), "elapsed_s": round(elapsed, 2), "eta_s": None if eta is None else round(eta, 2)}

    def _level_fraction(self, progress: Any) -> float:
        """The share of levels done, steps within a level counted as learnt so far."""
        if self.first_level is None:
            self.first_level = progress.level
        if progress.level == self.first_level:
            self.steps_per_level = max(self.steps_per_level, progress.step + 1)
        within = min(1.0, (progress.step + 1) / self.steps_per_level)
        return (progress.level - 1 + within) / max(1, progress.num_levels)

"""The seam between the job store and whatever runs jobs: a :class:`Worker` runs one job
at a time on one device, and an :class:`Executor` hands the store its workers as they come
and go.

The store (:mod:`~poe_backend.server.jobs`) is the only queue and the only place jobs
persist; executors never see the queue. Two executors implement this protocol:

* the embedded one, the default: one spawned job process per device of this machine
  (:class:`~poe_backend.server.worker.DeviceWorker`), attached once at start;
* the Ray one (``serve --executor ray``, :mod:`poe_backend.server.ray_executor`): one
  actor per GPU of a Ray cluster, attached when its GPU joins and detached when it leaves.

A worker's ``run`` returns the job's :class:`~poe_backend.server.worker.JobOutcome` (a
job that raised, or whose process died, is an outcome: ``failed`` with code
``worker_died`` for the latter), raises :class:`~poe_backend.server.worker.WorkerStopped`
when the store stopped it, and :class:`NodeLost` when the machine it ran on left the
cluster mid-job (the store then queues the job again once).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

from poe_backend.server.worker import JobOrder, JobOutcome


class NodeLost(RuntimeError):
    """The machine running the job left the cluster (network loss, shutdown): the job has
    no outcome, and the store decides whether to run it again."""


@runtime_checkable
class Worker(Protocol):
    """One device that runs jobs one at a time.

    ``device``: the torch device on its machine (``cuda:0``, ``cpu``); ``node``: that
    machine's name (``local`` for the embedded executor); ``loaded_models``: the model
    components its process holds after its last job (paths, as
    :meth:`~poe_backend.runtime.cache.ModelCache.loaded_models` gives them).

    ``loaded_models``, :meth:`refusal` and :meth:`describe` are read under the store's
    scheduling lock, for every queued job a free worker scans: they must answer at once
    from what the worker already knows (no remote call, no waiting)."""

    device: str
    node: str
    loaded_models: list[str]

    def start(self) -> None:
        """Start the process that runs jobs (returns at once; it may still be loading)."""

    def stop(self) -> None:
        """End that process; a job it runs ends without an outcome."""

    def run(self, order: JobOrder, wait_s: float, on_wait: Callable[[], None]) -> JobOutcome:
        """Run ``order`` and return its outcome, calling ``on_wait`` every ``wait_s``
        seconds meanwhile (the store persists progress there)."""

    def progress(self, seq: int) -> dict[str, Any] | None:
        """The latest progress report of job ``seq``; never waits behind the job."""

    def cancel(self, seq: int) -> None:
        """Ask job ``seq`` to stop at its next sampler step or checkpoint; never waits."""

    def device_memory(self) -> tuple[int | None, int | None]:
        """Free and total bytes of its device as last read (None off CUDA)."""

    def refusal(self, order: JobOrder) -> str | None:
        """Why this worker cannot run ``order`` (weights missing on its machine, a plan
        that does not fit its card, another backend version), or None when it can."""

    def describe(self) -> dict[str, Any]:
        """What ``/v1/health`` lists for it: ``node``, ``device``, ``memory_free``,
        ``memory_total`` (bytes or None), ``loaded_models`` and ``state``."""


class Executor(Protocol):
    """Hands the store its workers: ``attach(worker)`` when one can take jobs (already
    started), ``detach(worker)`` when it is gone for good (its running job, if any, ends
    with :class:`NodeLost` from its ``run``)."""

    def start(self, attach: Callable[[Worker], None], detach: Callable[[Worker], None]) -> None:
        """Start the workers known now and follow the membership from then on."""

    def stop(self) -> None:
        """Stop every worker and stop following the membership."""

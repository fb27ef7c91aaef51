"""The job store's queue: which queued job a free worker takes.

Workers pull: each attached worker's feeding thread asks :meth:`Scheduler.take` for its
next job when it is free, so a slow GPU never holds back a fast one. The rule, for a free
worker W, over the queued jobs in submission order:

1. W considers only the jobs it accepts (:meth:`~poe_backend.server.executor.Worker.refusal`
   is None: weights present on its machine, a plan that fits its card), and of those only
   the first :data:`LOOKAHEAD`.
2. Among them, a job already passed over :data:`MAX_PASSED_OVER` times is *due*: W takes
   the oldest due job.
3. Else W takes the oldest job whose models it already holds (every model path the job
   needs is in W's ``loaded_models``; a job that loads no weights holds no preference).
4. Else W takes the oldest job it accepts.

Each job W accepted and left for a younger one counts one pass-over. Why: switching a
card between FLUX and Wan costs about a minute of loading, against ~1 min for a FLUX
insertion and ~15 min for a Wan video, so a worker that keeps its model set busy saves a
load per job it takes out of turn. Why the bounds: a job can be passed over only while it
is within some worker's look-ahead, at most :data:`MAX_PASSED_OVER` times, after which the
next worker that accepts it takes it; jobs beyond the look-ahead move up as the ones ahead
leave. So nothing starves, and the reordering stays within a few jobs of submission order.

A job that no attached worker accepts stays queued; its record's ``waiting`` field says
why (each worker's refusal, or that no worker is attached yet), refreshed when workers
come or go, when it is queued and at most every :data:`RECHECK_S` while workers idle (a
refusal may lift: weights pulled on a node). ``waiting`` is None while some worker
accepts it.

Which models a job needs (:func:`model_paths`): the roles
:func:`~poe_backend.tasks.requirements.required_roles` names for its task, params and
preset, mapped to paths by the weights manager (:func:`poe_backend.models.weights.status`,
``path``: the directory the loader reads). Those are the keys a job process's model cache
reports (:meth:`~poe_backend.runtime.cache.ModelCache.loaded_models`, ``str(lookup.resolve(
role, preset))``: the same search). Paths are resolved on this machine: a worker on another
machine matches when its weights lie at the same paths (the same data dir and Hugging Face
cache location on every box); where they do not, it simply gets no preference.
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from poe_backend.server.worker import JobOrder

if TYPE_CHECKING:
    from poe_backend.server.executor import Worker
    from poe_backend.server.jobs import Job

#: Queued jobs a free worker looks at (those it accepts, oldest first).
LOOKAHEAD = 8
#: Pass-overs after which a job is taken by the next worker that accepts it.
MAX_PASSED_OVER = 4
#: Seconds an idle worker waits before it asks again for jobs it refused (a refusal may
#: lift), and the least time between two refreshes of the ``waiting`` notes on that account.
RECHECK_S = 5.0
#: A queued job's ``waiting`` note while no worker is attached.
NO_WORKER = "no worker is attached yet (the executor is starting, or every machine left the cluster)"
#: Distinct refusals a ``waiting`` note quotes.
QUOTED_REFUSALS = 3


def model_paths(task: str, params: Mapping[str, Any], preset: str) -> frozenset[str]:
    """The model paths a job loads, as its process's model cache will report them (see the
    module docstring); roles whose weights are not on this machine are left out, and a task
    or preset the requirements do not know gives none (the job gets no preference)."""
    from poe_backend.models.specs import data_dir
    from poe_backend.models.weights import status
    from poe_backend.tasks.requirements import required_roles

    try:
        statuses = status(required_roles(task, params, preset), preset, data_dir(), online=False)
    except (KeyError, ValueError, OSError):  # unknown task, role or preset; unreadable preset file
        return frozenset()
    return frozenset(str(role.path) for role in statuses if role.path is not None)


@dataclass(eq=False)
class QueuedJob:
    """A job in the queue: ``place`` its submission order (kept when it is queued again),
    ``order`` what it runs (``seq`` 0 until it is taken), ``needs`` its model paths,
    ``passed_over`` how often a worker that accepted it took a younger job."""

    job: Job
    place: int
    order: JobOrder
    needs: frozenset[str]
    passed_over: int = 0


def choose(accepted: list[QueuedJob], held: Collection[str]) -> QueuedJob | None:
    """The job a worker holding the models ``held`` takes out of ``accepted`` (the queued
    jobs it accepts, oldest first, at most :data:`LOOKAHEAD`): the oldest due job, else the
    oldest whose models it holds, else the oldest; None when ``accepted`` is empty."""
    if not accepted:
        return None
    due = next((queued for queued in accepted if queued.passed_over >= MAX_PASSED_OVER), None)
    if due is not None:
        return due
    return next((queued for queued in accepted if queued.needs and queued.needs <= set(held)), accepted[0])


@dataclass(eq=False)
class Attached:
    """An attached worker; ``detached`` once the executor took it away (its feeding thread
    ends after its current job)."""

    worker: Worker
    detached: bool = False


class Scheduler:
    """The queued jobs in submission order and the attached workers, under one condition
    variable. Feeding threads block in :meth:`take`; everything else returns at once.
    Worker methods called here (``refusal``, ``loaded_models``) must not wait."""

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._queued: list[QueuedJob] = []  # by place
        self._attached: list[Attached] = []
        self._places = itertools.count(1)
        self._explained_at = 0.0  # time.monotonic() of the last refresh of every waiting note
        self._closed = False

    def workers(self) -> list[Worker]:
        """The attached workers, in the order they were attached."""
        with self._ready:
            return [attached.worker for attached in self._attached]

    def attach(self, worker: Worker) -> Attached:
        """Add ``worker`` (attach each worker object once); its feeding thread then calls
        :meth:`take` with the returned handle."""
        with self._ready:
            attached = Attached(worker)
            self._attached.append(attached)
            self._explain_waiting()
            self._ready.notify_all()
            return attached

    def detach(self, worker: Worker) -> None:
        """Take ``worker`` away: it takes no more jobs."""
        with self._ready:
            for attached in [attached for attached in self._attached if attached.worker is worker]:
                attached.detached = True
                self._attached.remove(attached)
            self._explain_waiting()
            self._ready.notify_all()

    def close(self) -> None:
        """Wake every :meth:`take` with None, for good (the store stops)."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def put(self, job: Job, order: JobOrder) -> None:
        """Queue ``job`` last (``order``: what it will run, ``seq`` 0)."""
        needs = model_paths(job.task, job.params, job.models)  # file system reads: outside the lock
        with self._ready:
            self._insert(QueuedJob(job, next(self._places), order, needs))

    def put_back(self, queued: QueuedJob) -> None:
        """Queue a job taken before at its original place (after a lost machine)."""
        with self._ready:
            self._insert(replace(queued, passed_over=0))

    def _insert(self, queued: QueuedJob) -> None:
        bisect.insort(self._queued, queued, key=lambda item: item.place)
        queued.job.waiting = self._waiting_note(queued)
        self._ready.notify_all()

    def take(self, attached: Attached) -> QueuedJob | None:
        """Block until ``attached`` may take a job by the module's rule, and return it out
        of the queue; None once it is detached or the scheduler closed. Jobs no longer
        queued (cancelled) leave the queue here."""
        with self._ready:
            while not (self._closed or attached.detached):
                self._queued = [queued for queued in self._queued if queued.job.state == "queued"]
                accepted = list(itertools.islice((queued for queued in self._queued if attached.worker.refusal(queued.order) is None), LOOKAHEAD))
                chosen = choose(accepted, attached.worker.loaded_models)
                if chosen is not None:
                    for older in accepted[: accepted.index(chosen)]:
                        older.passed_over += 1
                    self._queued.remove(chosen)
                    chosen.job.waiting = None
                    return chosen
                if time.monotonic() - self._explained_at >= RECHECK_S:
                    self._explain_waiting()
                self._ready.wait(RECHECK_S)
            return None

    def _explain_waiting(self) -> None:
        """Refresh the ``waiting`` note of every queued job (call with the lock held)."""
        self._explained_at = time.monotonic()
        for queued in self._queued:
            queued.job.waiting = self._waiting_note(queued)

    def _waiting_note(self, queued: QueuedJob) -> str | None:
        """Why no attached worker takes ``queued``: :data:`NO_WORKER`, or the refusals of
        all of them (the first :data:`QUOTED_REFUSALS` distinct ones); None when one accepts it."""
        if not self._attached:
            return NO_WORKER
        refusals: dict[str, None] = {}
        for attached in self._attached:
            reason = attached.worker.refusal(queued.order)
            if reason is None:
                return None
            refusals[f"{attached.worker.device} on {attached.worker.node}: {reason}"] = None
        quoted = list(refusals)[:QUOTED_REFUSALS]
        more = f" (and {len(refusals) - len(quoted)} more)" if len(refusals) > len(quoted) else ""
        return f"no attached worker takes it: {'; '.join(quoted)}{more}"

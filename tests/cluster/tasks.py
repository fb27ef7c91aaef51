"""Tasks the Ray executor's tests run on the cluster's actors (they import them by the
``module:Class`` path the store sends, so this module must stay light)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from poe_backend.runtime.cache import MODEL_CACHE
from poe_backend.sampling import SamplingCancelled
from poe_backend.tasks.base import Task, TaskContext, TaskParams, TaskResult

#: Longest hold of a :class:`HoldTask` (seconds), so a failed test never leaves a job behind.
MAX_HOLD_S = 120.0


class HoldParams(TaskParams):
    role: str | None = None
    started: str
    hold_until: str


class HoldTask(Task):
    """Loads ``role`` (tiny preset) when given, appends its process id to the file
    ``started``, then holds until the file ``hold_until`` exists (at most
    :data:`MAX_HOLD_S`); a cancel ends the hold as a sampler step would
    (:class:`~poe_backend.sampling.SamplingCancelled`)."""

    name = "test_hold"
    Params = HoldParams

    def model_roles(self, context: TaskContext) -> list[str]:
        return [context.params.role] if context.params.role else []

    def run(self, context: TaskContext) -> TaskResult:
        if context.params.role:
            MODEL_CACHE.load(context.params.role, context.models)
        with open(context.params.started, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        deadline = time.monotonic() + MAX_HOLD_S
        while not Path(context.params.hold_until).exists() and time.monotonic() < deadline:
            if context.should_stop is not None and context.should_stop():
                raise SamplingCancelled("while holding")
            time.sleep(0.02)
        return TaskResult("points", "none", {}, {"pid": os.getpid()})


class DigestParams(TaskParams):
    file: str


class DigestTask(Task):
    """Writes the SHA-256 of the bundle's ``file`` (as the job's process read it) to the
    output ``digest.txt``."""

    name = "test_digest"
    Params = DigestParams

    def run(self, context: TaskContext) -> TaskResult:
        digest = hashlib.sha256((context.bundle.root / context.params.file).read_bytes()).hexdigest()
        path = context.out_dir / "digest.txt"
        path.write_text(digest)
        return TaskResult("points", "digest", {"digest": path}, {"pid": os.getpid()})

"""Errors the service answers with, and how a failed job's exception becomes advice.

Every 4xx body has one shape, ``{"error": {"code", "field", "message"}}``, where ``field``
is a dotted path into the request (``task``, ``bundle_path``, ``params.num_levels``) or
into bundle.json (``passes.rgb``, ``schema``), so the add-on can show it as is. Whatever
the input, an error body and a failed job's message render and stay small: text taken
from the input (a key, a path, a value) is cut (:data:`MAX_FIELD_CHARS`,
:data:`MAX_MESSAGE_CHARS`) and its lone surrogates are escaped (:func:`printable`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from poe_backend.bundle import BundleError
from poe_backend.models.specs import MissingWeights


#: Longest ``field`` in an error body, in characters (a field can name a client's key).
MAX_FIELD_CHARS = 200
#: Longest message in an error body or a failed job's error, in characters (a message can
#: quote the value at fault).
MAX_MESSAGE_CHARS = 2_000


def printable(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (an ellipsis marks the cut) and encodable as
    UTF-8: lone surrogates (a JSON escape such as ``\\ud800``, a tar member name that is not
    UTF-8) become backslash escapes, so a JSON answer can always be rendered."""
    cut = text if len(text) <= limit else text[:limit] + "…"
    return cut.encode("utf-8", "backslashreplace").decode("utf-8")


class InputError(Exception):
    """Bad input from a client: answered with ``status`` (400 unless said otherwise)."""

    def __init__(self, field: str, message: str, *, code: str = "invalid_input", status: int = 400, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.code = code
        self.status = status
        self.headers = headers  # sent with the answer (a 503's Retry-After)

    def body(self) -> dict[str, Any]:
        """The answer's JSON, renderable and bounded whatever text the input brought."""
        field = printable(self.field, MAX_FIELD_CHARS)
        return {"error": {"code": self.code, "field": field, "message": f"{field}: {printable(self.message, MAX_MESSAGE_CHARS)}"}}


@dataclass(frozen=True)
class JobFailure:
    """Why a job failed: a stable ``code``, a message a person can act on and, where one
    command fixes it, that ``command`` (the add-on shows it to copy)."""

    code: str
    message: str
    command: str | None = None

    def to_json(self) -> dict[str, str]:
        body = {"code": self.code, "message": self.message}
        return body if self.command is None else {**body, "command": self.command}


#: Every name below is a real parameter of the tasks' params models (tasks/*.py) or the
#: job's ``models`` field.
OUT_OF_MEMORY_ADVICE = (
    "out of memory while running the task. Try params preset: 'preview' (small and fast defaults), "
    "fewer 'particles' or 'levels', a smaller 'max_side' or 'max_batch', or params offload: "
    "'group' (layers streamed in groups) or 'sequential' (slowest, smallest); models: 'preview' "
    "picks smaller model variants where a family has them."
)


def pull_command(task: str, models: str) -> str:
    """The ``poe-backend models pull`` command that fetches what ``task`` needs in preset
    ``models`` (a JSON preset is named by its file stem, as ``<data dir>/presets`` holds it)."""
    from poe_backend.models.weights import pull_command as weights_pull_command

    return weights_pull_command(task, models.rsplit("/", 1)[-1].removesuffix(".json"))


def _is_torch_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is torch's out-of-memory error (``torch.OutOfMemoryError``: CUDA,
    MPS, ...). Looks torch up in ``sys.modules`` rather than importing it, so this module
    stays torch-free: an error can only be torch's where torch is already loaded."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(error, torch.OutOfMemoryError)


def describe_failure(error: BaseException, *, task: str = "", models: str = "default") -> JobFailure:
    """Map an exception raised by ``task`` run with model preset ``models`` to a
    :class:`JobFailure` (never re-raises) whose message is :func:`printable` (it is stored,
    logged and answered)."""
    failure = _failure_for(error, task, models)
    return JobFailure(failure.code, printable(failure.message, MAX_MESSAGE_CHARS), failure.command)


def _failure_for(error: BaseException, task: str, models: str) -> JobFailure:
    # MemoryError also covers the memory planner's PlanError (a subclass; its module,
    # poe_backend.runtime.planner, imports torch, so it is not imported here).
    if isinstance(error, MemoryError) or _is_torch_out_of_memory(error):
        return JobFailure("out_of_memory", f"{OUT_OF_MEMORY_ADVICE} ({type(error).__name__}: {error})")
    if isinstance(error, MissingWeights):
        command = pull_command(task, models)
        return JobFailure("missing_weights", f"the weights for this job are not on the backend machine: run `{command}` there, then submit again ({error})", command)
    if isinstance(error, BundleError) and error.field:
        return JobFailure("invalid_bundle", str(error))
    return JobFailure("task_error", f"{type(error).__name__}: {error} (the job's log has the traceback)")

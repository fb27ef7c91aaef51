"""Errors the service answers with, and how a failed job's exception becomes advice.

Every 4xx body has one shape, ``{"error": {"code", "field", "message"}}``, where ``field``
is a dotted path into the request (``task``, ``bundle_path``, ``params.num_levels``) or
into bundle.json (``passes.rgb``, ``schema``), so the add-on can show it as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class InputError(Exception):
    """Bad input from a client: answered with ``status`` (400 unless said otherwise)."""

    def __init__(self, field: str, message: str, *, code: str = "invalid_input", status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.code = code
        self.status = status

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "field": self.field, "message": f"{self.field}: {self.message}"}}


@dataclass(frozen=True)
class JobFailure:
    """Why a job failed: a stable ``code`` and a message a person can act on."""

    code: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


OUT_OF_MEMORY_ADVICE = (
    "out of memory while running the task. Try the 'preview' parameters, fewer particles or "
    "frames, a lower resolution, or a stronger offload preset (models='offload' keeps only the "
    "active model on the GPU; models='sequential' streams layers, slowest but smallest)."
)

#: Exception class names the model registry raises when weights are missing or unloadable;
#: their message already says which weights and where they were looked for.
MODEL_ERROR_NAMES = frozenset({"ModelNotFoundError", "MissingWeightsError", "ModelLoadError", "WeightsNotFoundError"})


def describe_failure(error: BaseException) -> JobFailure:
    """Map an exception raised by a task to a :class:`JobFailure` (never re-raises)."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return JobFailure("out_of_memory", f"{OUT_OF_MEMORY_ADVICE} ({type(error).__name__}: {error})")
    if type(error).__name__ in MODEL_ERROR_NAMES or any(cls.__name__ in MODEL_ERROR_NAMES for cls in type(error).__mro__):
        return JobFailure("model_unavailable", f"a model could not be loaded: {error}")
    field = getattr(error, "field", None)
    if type(error).__name__ == "BundleError" and field:
        return JobFailure("invalid_bundle", str(error))
    return JobFailure("task_error", f"{type(error).__name__}: {error} (the job's log has the traceback)")

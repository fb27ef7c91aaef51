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
    "out of memory while running the task. Lower what the job holds at once: params.preset="
    "'preview' (small and fast defaults), fewer params.particles or a smaller params.max_batch, "
    "a smaller params.max_side (and params.max_frames for video), or params.offload='group' "
    "(streams transformer blocks; slower, far smaller); image tasks also take "
    "params.fp8_storage=true."
)

#: Exception class names of a model whose files are there but cannot be loaded.
MODEL_ERROR_NAMES = frozenset({"ModelNotFoundError", "ModelLoadError"})


def describe_failure(error: BaseException, *, task: str | None = None, models: str | None = None) -> JobFailure:
    """Map an exception raised by a task to a :class:`JobFailure` (never re-raises).

    Missing weights become ``missing_weights`` with the exact ``poe-backend models pull``
    command for the job's ``task`` and registry preset ``models`` (the add-on shows it)."""
    from poe_backend.experts.specs import MissingWeights

    if isinstance(error, MissingWeights):
        command = pull_command(task, models)
        return JobFailure("missing_weights", f"model weights are missing on the backend machine; run `{command}` there ({error})")
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return JobFailure("out_of_memory", f"{OUT_OF_MEMORY_ADVICE} ({type(error).__name__}: {error})")
    if any(cls.__name__ in MODEL_ERROR_NAMES for cls in type(error).__mro__):
        return JobFailure("model_unavailable", f"a model could not be loaded: {error}")
    field = getattr(error, "field", None)
    if type(error).__name__ == "BundleError" and field:
        return JobFailure("invalid_bundle", str(error))
    return JobFailure("task_error", f"{type(error).__name__}: {error} (the job's log has the traceback)")


def pull_command(task: str | None, models: str | None) -> str:
    """``poe-backend models pull`` for a task and registry preset; the preset's name only
    when it is a built-in one (a JSON preset's roles are the user's own)."""
    from poe_backend.experts.specs import BUILTIN_PRESETS
    from poe_backend.experts.weights import pull_command as weights_pull_command

    preset = models if models in BUILTIN_PRESETS else "default"
    return weights_pull_command(task, preset) if task else f"poe-backend models pull --preset {preset}"

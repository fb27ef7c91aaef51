"""Finding model weights on disk: a local directory or the Hugging Face cache, never the network.

A stop-gap for the video experts until the shared registry
(:mod:`poe_backend.experts.registry`, owned by the image half of issue 6) is merged: the
video modules describe their models with :class:`ModelSpec` and resolve them through
:func:`resolve_model_dir`, which :mod:`poe_backend.experts.registry` can wrap or replace.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


class ModelNotFoundError(FileNotFoundError):
    """A model that is neither a local directory nor in the local Hugging Face cache. The
    message names the repo to download and where it was looked for."""


@dataclass(frozen=True)
class ModelSpec:
    """One named model: a Hub ``repo_id`` (and ``revision``) or a local ``path``;
    ``subfolders`` are the diffusers/transformers components it must contain."""

    name: str
    repo_id: str
    revision: str | None = None
    subfolders: tuple[str, ...] = ()
    description: str = ""
    extra: dict = field(default_factory=dict)


def hub_cache_dir() -> Path:
    """Where ``huggingface_hub`` caches snapshots (``HF_HUB_CACHE`` / ``HF_HOME``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def resolve_model_dir(spec_or_path: ModelSpec | str | Path) -> Path:
    """The local directory holding the model: a path that exists, or the cached snapshot of
    the spec's repo (``local_files_only``: nothing is downloaded). Raises
    :class:`ModelNotFoundError` saying exactly what to download and where it is looked for."""
    if isinstance(spec_or_path, (str, Path)) and Path(spec_or_path).is_dir():
        return Path(spec_or_path)
    spec = spec_or_path if isinstance(spec_or_path, ModelSpec) else ModelSpec(str(spec_or_path), str(spec_or_path))
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(spec.repo_id, revision=spec.revision, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        revision = f" --revision {spec.revision}" if spec.revision else ""
        raise ModelNotFoundError(
            f"model '{spec.name}' not found: repo '{spec.repo_id}' is not in the local Hugging Face cache "
            f"({hub_cache_dir()}, set HF_HUB_CACHE or HF_HOME to change it) and is not a local directory. "
            f"Download it with `huggingface-cli download {spec.repo_id}{revision}` (weights are never "
            f"fetched at run time)."
        ) from None
    missing = [name for name in spec.subfolders if not (path / name).is_dir()]
    if missing:
        raise ModelNotFoundError(f"model '{spec.name}' at {path} lacks the component folders {missing}")
    return path


def offline() -> None:
    """Make transformers/diffusers never reach the network in this process."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

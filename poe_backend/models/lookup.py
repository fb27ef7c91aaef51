"""Where a role's files are on this machine (local only, never the network).

A spec with a ``local_dir`` is read under the data directory (a tiny family is built there on
first use); a spec with a repo id is found in ``<data dir>/models/<owner>/<name>`` or in the
Hugging Face cache (``snapshot_download(local_files_only=True)``). A missing model raises
:class:`~poe_backend.models.specs.MissingWeights`, naming the repo, revision, the download
command and every place searched. :func:`resolve` is the single entry point (a weights
manager's ``locate`` plugs in there).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import threading
from pathlib import Path
from typing import Iterable

from poe_backend.models.specs import MissingWeights, ModelSpec, data_dir, get_spec

_BUILD_LOCK = threading.Lock()


def resolve(role: str, preset: str = "default") -> Path:
    """The local directory holding ``role``'s files (subfolder included). Builds a tiny
    family on first use; raises :class:`MissingWeights` when the weights are absent."""
    spec = get_spec(role, preset)
    if spec.local_dir is not None:
        return _resolve_local(role, spec)
    return _resolve_hub(role, spec)


def _resolve_local(role: str, spec: ModelSpec) -> Path:
    directory = Path(spec.local_dir)
    if not directory.is_absolute():
        directory = data_dir() / directory
    target = directory / spec.subfolder if spec.subfolder else directory
    if not target.exists() and spec.builder is not None:
        with _BUILD_LOCK:
            if not target.exists():
                _build(spec.builder, directory)
    if not target.exists():
        raise MissingWeights(role, None, None, [str(target)])
    return target


def _build(builder: str, directory: Path) -> None:
    """Run a family's tiny builder into a temporary directory, then rename it into place
    (so a crash never leaves a half-built family behind)."""
    module_name, function_name = builder.split(":")
    temporary = directory.with_name(directory.name + f".building-{os.getpid()}")
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir(parents=True)
    getattr(importlib.import_module(module_name), function_name)(temporary)
    if directory.exists():  # built concurrently by another process
        shutil.rmtree(temporary)
        return
    temporary.rename(directory)


def hub_search_paths(repo_id: str) -> list[Path]:
    """Where a repo is looked for: ``<data dir>/models/<repo_id>``, then the HF cache."""
    from huggingface_hub import constants

    return [data_dir() / "models" / repo_id, Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"]


def _resolve_hub(role: str, spec: ModelSpec) -> Path:
    """The complete copy that :func:`poe_backend.models.weights.locate` finds (data dir,
    the HF cache snapshot, or a sibling repo carrying identical shared files)."""
    from poe_backend.models.weights import locate

    found = locate(spec, data_dir=data_dir())
    if found is not None:
        return found
    local, cache = hub_search_paths(spec.repo_id)
    searched = [f"local dir {local}", f"Hugging Face cache {cache} (HF_HUB_CACHE)"]
    raise MissingWeights(role, spec.repo_id, spec.revision, searched, subfolder=spec.subfolder)


def check_available(roles: Iterable[str], preset: str) -> None:
    """Resolve every role up front, so a task fails before loading anything when one is
    missing; raises one :class:`MissingWeights` naming every missing repo once (with the
    roles that need it), the download commands and the places searched."""
    errors: list[MissingWeights] = []
    for role in roles:
        try:
            resolve(role, preset)
        except MissingWeights as error:
            errors.append(error)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise MissingWeights.combined(errors)


def weight_bytes(role: str, preset: str = "default") -> int:
    """Bytes of ``role``'s weight files on disk (``*.safetensors``, else ``*.bin``): the
    memory it takes in its stored dtype (bf16 for FLUX and Qwen2.5-VL), known before loading
    so a placement can be chosen without a CPU copy."""
    directory = resolve(role, preset)
    files = list(directory.glob("*.safetensors")) or list(directory.glob("*.bin"))
    return sum(path.stat().st_size for path in files)


def parameter_count(role: str, preset: str = "default") -> int | None:
    """Number of values stored in ``role``'s ``*.safetensors`` files, read from their headers
    (8-byte little-endian length, then JSON with each tensor's shape; no tensor data is
    read, no torch needed); None when the role has no safetensors files. Times a dtype's
    size it is what loading the role in that dtype puts on a device, before loading it
    (non-persistent buffers aside)."""
    files = sorted(resolve(role, preset).glob("*.safetensors"))
    if not files:
        return None
    count = 0
    for path in files:
        with open(path, "rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        count += sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")
    return count

"""Which model presets a job may name (its ``models`` field), checked at submit.

Accepted: a built-in preset (``default``, ``preview``, ``tiny``) or a JSON preset file in
``<data dir>/presets/`` named by its stem (``studio``) or path. Every ``local_dir`` in it
must lie under an allowed root: the data dir, the models' data dir
(:func:`~poe_backend.models.specs.data_dir`, where relative ``local_dir`` values are read),
the Hugging Face cache, and the ``--allow-root`` folders.
Nothing of a refused file's content is echoed. The job then carries the file's absolute
path, which :mod:`poe_backend.models.specs` reads as a JSON preset.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from poe_backend.server.errors import InputError

BUILTIN_PRESETS = ("default", "preview", "tiny")
PRESET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: Largest preset file read, in bytes.
MAX_PRESET_BYTES = 64 << 10


def allowed_model_roots(data_dir: Path, extra_roots: list[Path]) -> list[Path]:
    """The folders a preset's ``local_dir`` may point into (resolved)."""
    from huggingface_hub import constants

    from poe_backend.models import specs

    return [root.resolve() for root in (data_dir, specs.data_dir(), Path(constants.HF_HUB_CACHE), *extra_roots)]


def check_models(models: object, data_dir: Path, roots: list[Path]) -> str:
    """The preset a job runs with: a built-in name, or the absolute path of a checked JSON
    preset in ``<data dir>/presets``. Raises :class:`InputError` on field ``models``."""
    if not isinstance(models, str):
        raise InputError("models", f"must be a preset name ({', '.join(BUILTIN_PRESETS)} or a file in <data dir>/presets)")
    if models in BUILTIN_PRESETS:
        return models
    presets_dir = (data_dir / "presets").resolve()
    name = Path(models).name.removesuffix(".json")
    path = (presets_dir / f"{name}.json").resolve()
    given = Path(models)
    if not PRESET_NAME.fullmatch(name) or path.parent != presets_dir or (given.is_absolute() and given.resolve() != path) or ("/" in models and not given.is_absolute()):
        raise InputError("models", f"{models!r} is not a preset: use {', '.join(BUILTIN_PRESETS)} or the name of a JSON file in <data dir>/presets")
    if not path.is_file():
        raise InputError("models", f"no preset {name!r}: not built in ({', '.join(BUILTIN_PRESETS)}) and no {name}.json in <data dir>/presets")
    _check_local_dirs(_read_preset(path, name), name, roots)
    return str(path)


def _read_preset(path: Path, name: str) -> dict:
    try:
        with open(path, "rb") as handle:
            text = handle.read(MAX_PRESET_BYTES + 1)
        if len(text) > MAX_PRESET_BYTES:
            raise ValueError("too large")
        data = json.loads(text)
    except ValueError:
        raise InputError("models", f"preset {name!r} is not valid JSON (or over {MAX_PRESET_BYTES} bytes)") from None
    if not isinstance(data, dict) or data.get("base", "default") not in BUILTIN_PRESETS or not isinstance(data.get("roles", {}), dict):
        raise InputError("models", f"preset {name!r} must be an object with base one of {', '.join(BUILTIN_PRESETS)} and a roles object")
    return data


def _check_local_dirs(data: dict, name: str, roots: list[Path]) -> None:
    from poe_backend.models import specs

    for role, override in data.get("roles", {}).items():
        local = override.get("local_dir") if isinstance(override, dict) else None
        if local is None:
            continue
        directory = Path(str(local)) if Path(str(local)).is_absolute() else specs.data_dir() / str(local)
        resolved = directory.resolve()
        if not any(resolved.is_relative_to(root) for root in roots):
            raise InputError("models", f"preset {name!r} role {role!r}: local_dir is outside the allowed roots (the data dir, the Hugging Face cache, --allow-root folders)")

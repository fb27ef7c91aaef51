"""What each model role is: :class:`ModelSpec`, families, presets and :class:`MissingWeights`.

A *role* is a dotted name such as ``"flux.vae"`` or ``"flux.transformer.depth"``; its
:class:`ModelSpec` gives a Hugging Face repo id + revision + subfolder (or a local
directory) and the loader class (``"diffusers:AutoencoderKL"``). A *preset* maps roles to
specs:

* ``"default"`` — the real full-size repositories (FLUX.1 [dev] / Depth / Fill, Qwen2.5-VL-7B).
* ``"preview"`` — smaller variants where a family has them (Qwen2.5-VL-3B ...); roles a
  family does not override fall back to ``"default"``.
* ``"tiny"`` — small random-init models of the same classes, built once by the family's
  builder into ``<data dir>/tiny/<family>/`` with ``save_pretrained`` and then loaded with
  ``from_pretrained`` exactly as real weights are, so the real loading path runs in tests.
* a JSON file (path, or ``<data dir>/presets/<name>.json``) ``{"base": "default",
  "roles": {"flux.vae": {"repo_id": ..., "revision": ..., "subfolder": ...} | {"local_dir": ...}}}``
  overriding roles of its base preset.

Families register themselves: each family's torch-free ``poe_backend/families/<family>/declaration.py``
calls :func:`register_family`; the first lookup imports every such module, so families never
edit the same lines of one table.

This module only describes; :mod:`~poe_backend.models.lookup` finds the files,
:mod:`~poe_backend.runtime.cache` loads and evicts, :mod:`~poe_backend.runtime.placement`
puts modules on devices.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import pkgutil
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

BUILTIN_PRESETS: tuple[str, ...] = ("default", "preview", "tiny")


def download_command(repo_id: str, revision: str | None, subfolders: list[str | None]) -> str:
    """The ``hf download`` command that fetches only ``subfolders`` of a repo (the whole
    repo when one of them is None, i.e. the model is the repo root)."""
    revision_flag = f" --revision {revision}" if revision else ""
    includes = "" if None in subfolders else "".join(f" --include '{folder}/*'" for folder in dict.fromkeys(subfolders))
    return f"hf download {repo_id}{revision_flag}{includes}"


class MissingWeights(RuntimeError):
    """A model is not on this machine. The message says what to download and where it was
    looked for; ``repo_id``, ``revision`` and ``searched`` hold the same as data."""

    def __init__(self, role: str, repo_id: str | None, revision: str | None, searched: list[str], hint: str = "", subfolder: str | None = None) -> None:
        self.role, self.repo_id, self.revision, self.searched, self.subfolder = role, repo_id, revision, searched, subfolder
        self.missing: list[tuple[str | None, str | None]] = [(repo_id, revision)]
        if repo_id is not None:
            what = f"model '{role}' needs the Hugging Face repo {repo_id} (revision {revision or 'main'})"
            how = f"download what it needs with `{download_command(repo_id, revision, [subfolder])}`, or every model of the task with `poe-backend models pull --task <task>`"
        else:
            what, how = f"model '{role}' has no weights on this machine", "put the model there"
        where = "; ".join(searched)
        super().__init__(f"{what}; {how}; searched: {where}" + (f"; {hint}" if hint else ""))


    @classmethod
    def combined(cls, errors: list["MissingWeights"]) -> "MissingWeights":
        """One error for several missing roles, grouped by repo (and revision)."""
        groups: dict[tuple, list[MissingWeights]] = {}
        for error in errors:
            groups.setdefault((error.repo_id, error.revision), []).append(error)
        parts = []
        for (repo_id, revision), members in groups.items():
            roles = ", ".join(member.role for member in members)
            if repo_id is None:
                parts.append(f"{roles}: no weights at {'; '.join(s for m in members for s in m.searched)}")
                continue
            command = download_command(repo_id, revision, [member.subfolder for member in members])
            parts.append(f"{repo_id} (revision {revision or 'main'}; for {roles}): `{command}`; searched: {'; '.join(members[0].searched)}")
        first = errors[0]
        combined = cls(first.role, first.repo_id, first.revision, [s for e in errors for s in e.searched])
        combined.missing = [(repo_id, revision) for repo_id, revision in groups]
        combined.args = (f"{len(groups)} model repos are missing: " + " | ".join(parts),)
        return combined


@dataclass(frozen=True)
class ModelSpec:
    """Where one component's weights live and which class loads them.

    ``loader`` is ``"module:ClassName"`` (``"diffusers:AutoencoderKL"``,
    ``"transformers:CLIPTextModel"``); the class's ``from_pretrained`` loads the directory.
    Exactly one of ``repo_id`` / ``local_dir`` is set; a relative ``local_dir`` is read
    under :func:`data_dir`. ``builder`` (``"module:function"``,
    tiny presets only) creates ``local_dir`` when it is missing: ``function(directory)``
    writes every component of the family under ``directory/<subfolder>``. ``is_module``
    is False for tokenizers and processors (loaded without dtype or device).
    """

    loader: str
    repo_id: str | None = None
    revision: str | None = None
    subfolder: str | None = None
    local_dir: Path | None = None
    builder: str | None = None
    is_module: bool = True
    load_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.repo_id is None) == (self.local_dir is None):
            raise ValueError("a ModelSpec needs exactly one of repo_id and local_dir")

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (result manifests record it for reproducibility)."""
        return {
            "loader": self.loader,
            "repo_id": self.repo_id,
            "revision": self.revision,
            "subfolder": self.subfolder,
            "local_dir": None if self.local_dir is None else str(self.local_dir),
        }


# ---------------------------------------------------------------------------------------
# Families and presets

@dataclass(frozen=True)
class FamilyFacts:
    """What a family declares besides its roles, read by the weights manager, the planner and
    the tasks:

    * ``shared_repos``: repos whose shared subfolders (VAE, text encoders, tokenizers) ship
      the same files, so one serves the others (FLUX.1 [dev] / Depth / Fill);
    * ``gated_repos``: repos whose licence must be accepted on the model page;
    * ``estimated_bytes``: offline download sizes per ``(repo, subfolder or None, is_module)``
      (parameter count × stored dtype bytes; tokenizers by their file sizes);
    * ``full_configs``: role -> ``(loader, config)`` of the full-size models the planner
      sizes on the meta device (the published ``config.json`` values);
    * ``native_fps``: the frame rate (frames per second) a video family's checkpoints were
      trained at; the video tasks sample the captured simulation at this rate
      (:func:`poe_backend.tasks.video_io.clip_timing`). None for image families.
    """

    shared_repos: frozenset[str] = frozenset()
    gated_repos: frozenset[str] = frozenset()
    estimated_bytes: Mapping[tuple[str, str | None, bool], int] = field(default_factory=dict)
    full_configs: Mapping[str, tuple[str, Mapping[str, Any]]] = field(default_factory=dict)
    native_fps: float | None = None


_FAMILIES: dict[str, dict[str, dict[str, ModelSpec]]] = {}
_FACTS: dict[str, FamilyFacts] = {}
_DISCOVERED = False
_LOCK = threading.RLock()


def register_family(family: str, presets: Mapping[str, Mapping[str, ModelSpec]], facts: FamilyFacts = FamilyFacts()) -> None:
    """Register a family's roles per preset, e.g. ``{"default": {"flux.vae": spec, ...},
    "preview": {...overrides...}, "tiny": {...}}``, and its :class:`FamilyFacts`. Role
    names should start with ``family + "."``. Registering a family again replaces it."""
    with _LOCK:
        _FAMILIES[family] = {preset: dict(roles) for preset, roles in presets.items()}
        _FACTS[family] = facts


def family_facts() -> dict[str, FamilyFacts]:
    """Every registered family's :class:`FamilyFacts` (discovers the families first)."""
    _discover()
    return _FACTS


#: role -> (loader, repo id, subfolder or None, is_module): a family's components on the Hub.
Components = Mapping[str, tuple[str, str, str | None, bool]]


def hub_specs(components: Components) -> dict[str, ModelSpec]:
    """Specs that resolve every component from its Hugging Face repo."""
    return {role: ModelSpec(loader, repo_id=repo, subfolder=subfolder, is_module=is_module) for role, (loader, repo, subfolder, is_module) in components.items()}


def tiny_specs(family: str, components: Components, builder: str) -> dict[str, ModelSpec]:
    """Specs of the tiny preset: role ``family.a.b`` lives in ``tiny/<family>/a_b``, made by
    ``builder`` ("module:function", called with the family's tiny directory) on first use."""
    return {
        role: ModelSpec(loader, local_dir=tiny_dir(family), subfolder=role.removeprefix(f"{family}.").replace(".", "_"), builder=builder, is_module=is_module)
        for role, (loader, _, _, is_module) in components.items()
    }


def tiny_dir(family: str) -> Path:
    """Where the tiny preset of ``family`` is built: ``tiny/<family>``, a relative path,
    which :func:`resolve` reads under the data directory at lookup time (so pointing
    ``POE_DATA_DIR`` elsewhere after import works)."""
    return Path("tiny") / family


def data_dir() -> Path:
    """The backend's data directory: ``$POE_DATA_DIR``, else ``$XDG_CACHE_HOME/poe-backend``
    (``~/.cache/poe-backend``). Read on every call, so tests can point it elsewhere."""
    if os.environ.get("POE_DATA_DIR"):
        return Path(os.environ["POE_DATA_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "poe-backend"


def families() -> dict[str, dict[str, dict[str, ModelSpec]]]:
    """Every registered family's roles per preset (imports the declarations on first call)."""
    _discover()
    return _FAMILIES


def preset_names() -> list[str]:
    """Built-in presets plus JSON presets in ``<data dir>/presets``."""
    directory = data_dir() / "presets"
    custom = sorted(path.stem for path in directory.glob("*.json")) if directory.is_dir() else []
    return list(BUILTIN_PRESETS) + custom


def get_spec(role: str, preset: str = "default") -> ModelSpec:
    """The spec of ``role`` in ``preset`` (``KeyError`` names the known roles)."""
    _discover()
    if preset in BUILTIN_PRESETS:
        return _builtin_spec(role, preset)
    return _custom_spec(role, preset)


def _builtin_spec(role: str, preset: str) -> ModelSpec:
    family = role.split(".", 1)[0]
    presets = _FAMILIES.get(family)
    if presets is None:
        raise KeyError(f"unknown model family {family!r} (role {role!r}); known: {', '.join(sorted(_FAMILIES))}")
    chain = [preset] if preset == "tiny" else [preset, "default"]
    for name in chain:
        if role in presets.get(name, {}):
            return presets[name][role]
    known = sorted({r for roles in presets.values() for r in roles})
    raise KeyError(f"unknown model role {role!r} in preset {preset!r}; known: {', '.join(known)}")


def _custom_spec(role: str, preset: str) -> ModelSpec:
    path = Path(preset) if preset.endswith(".json") else data_dir() / "presets" / f"{preset}.json"
    if not path.is_file():
        raise KeyError(f"unknown model preset {preset!r}: not built in ({', '.join(BUILTIN_PRESETS)}) and no file {path}")
    data = json.loads(path.read_text(encoding="utf-8"))
    base = data.get("base", "default")
    if base not in BUILTIN_PRESETS:
        raise KeyError(f"preset {path}: base must be one of {', '.join(BUILTIN_PRESETS)}, got {base!r}")
    spec = _builtin_spec(role, base)
    override = data.get("roles", {}).get(role)
    if override is None:
        return spec
    # An override names real files: never the base preset's tiny builder (it would write
    # random weights into the user's directory when it is missing).
    if "local_dir" in override:
        return replace(spec, repo_id=None, revision=None, local_dir=Path(override["local_dir"]), subfolder=override.get("subfolder"), builder=None)
    return replace(spec, repo_id=override["repo_id"], revision=override.get("revision"), subfolder=override.get("subfolder", spec.subfolder), local_dir=None, builder=None)


def _discover() -> None:
    """Import every family's torch-free ``poe_backend.families.<family>.declaration`` once
    (each calls :func:`register_family`)."""
    global _DISCOVERED
    with _LOCK:
        if _DISCOVERED:
            return
        package = importlib.import_module("poe_backend.families")
        for info in pkgutil.iter_modules(package.__path__):
            if info.ispkg and importlib.util.find_spec(f"poe_backend.families.{info.name}.declaration") is not None:
                importlib.import_module(f"poe_backend.families.{info.name}.declaration")
        _DISCOVERED = True


def roles_of(family: str, preset: str = "default") -> list[str]:
    """Role names a family defines for ``preset`` (falling back to ``default``)."""
    presets = families()[family]
    return sorted(set(presets.get("default", {})) | set(presets.get(preset, {})))


@contextlib.contextmanager
def temporary_env(**values: str) -> Iterator[None]:
    """Set environment variables inside a block (tests: ``POE_DATA_DIR``)."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

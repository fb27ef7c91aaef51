"""Model registry: role name -> where the weights live and which class loads them.

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

Lookup never touches the network (``HF_HUB_OFFLINE=1`` semantics): a spec with a repo id is
found in ``<data dir>/models/<owner>/<name>`` or in the Hugging Face cache
(``snapshot_download(local_files_only=True)``). A missing model raises
:class:`MissingWeights`, naming the repo, revision, the download command and every place
searched.

Families register themselves: a module ``poe_backend/experts/<family>_models.py`` (torch-free)
calls :func:`register_family`; the registry imports every such module on first use, so
families never edit the same lines of one table. (``flux_models.py``, ``vqascore_models.py``
here; the video families add their own files.)

Loaded components are cached per process by ``(path, dtype, device)`` so that experts sharing
a VAE or text encoder share one instance; :func:`release` frees a role (text encoders after
encoding). :class:`Placement` applies an offload preset (none / model / group / sequential).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import pkgutil
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping

#: Offload presets. ``auto`` picks one from free VRAM (:func:`choose_offload`).
OffloadPreset = Literal["auto", "none", "model", "group", "sequential"]
OFFLOAD_PRESETS: tuple[str, ...] = ("auto", "none", "model", "group", "sequential")
BUILTIN_PRESETS: tuple[str, ...] = ("default", "preview", "tiny")


class MissingWeights(RuntimeError):
    """A model is not on this machine. The message says what to download and where it was
    looked for; ``repo_id``, ``revision`` and ``searched`` hold the same as data."""

    def __init__(self, role: str, repo_id: str | None, revision: str | None, searched: list[str], hint: str = "") -> None:
        self.role, self.repo_id, self.revision, self.searched = role, repo_id, revision, searched
        self.missing: list[tuple[str | None, str | None]] = [(repo_id, revision)]
        if repo_id is not None:
            revision_flag = f" --revision {revision}" if revision else ""
            what = f"model '{role}' needs the Hugging Face repo {repo_id} (revision {revision or 'main'})"
            how = f"download it with `huggingface-cli download {repo_id}{revision_flag}` (or `hf download {repo_id}{revision_flag}`)"
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
            flag = f" --revision {revision}" if revision else ""
            parts.append(f"{repo_id} (revision {revision or 'main'}; for {roles}): `huggingface-cli download {repo_id}{flag}`; searched: {'; '.join(members[0].searched)}")
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

_FAMILIES: dict[str, dict[str, dict[str, ModelSpec]]] = {}
_DISCOVERED = False
_LOCK = threading.RLock()


def register_family(family: str, presets: Mapping[str, Mapping[str, ModelSpec]]) -> None:
    """Register a family's roles per preset, e.g. ``{"default": {"flux.vae": spec, ...},
    "preview": {...overrides...}, "tiny": {...}}``. Role names should start with
    ``family + "."``. Registering a family again replaces it."""
    with _LOCK:
        _FAMILIES[family] = {preset: dict(roles) for preset, roles in presets.items()}


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
    """Every registered family (imports the ``*_models`` modules on first call)."""
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
    if "local_dir" in override:
        return replace(spec, repo_id=None, revision=None, local_dir=Path(override["local_dir"]), subfolder=override.get("subfolder"))
    return replace(spec, repo_id=override["repo_id"], revision=override.get("revision"), subfolder=override.get("subfolder", spec.subfolder), local_dir=None)


def _discover() -> None:
    """Import every ``poe_backend.experts.*_models`` module once (they call register_family)."""
    global _DISCOVERED
    with _LOCK:
        if _DISCOVERED:
            return
        package = importlib.import_module("poe_backend.experts")
        for info in pkgutil.iter_modules(package.__path__):
            if info.name.endswith("_models"):
                importlib.import_module(f"poe_backend.experts.{info.name}")
        _DISCOVERED = True


# ---------------------------------------------------------------------------------------
# Resolution (local only)


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
        with _LOCK:
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
        import shutil

        shutil.rmtree(temporary)
    temporary.mkdir(parents=True)
    getattr(importlib.import_module(module_name), function_name)(temporary)
    if directory.exists():  # built concurrently by another process
        import shutil

        shutil.rmtree(temporary)
        return
    temporary.rename(directory)


def hub_search_paths(repo_id: str) -> list[Path]:
    """Where a repo is looked for: ``<data dir>/models/<repo_id>``, then the HF cache."""
    from huggingface_hub import constants

    return [data_dir() / "models" / repo_id, Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"]


def _resolve_hub(role: str, spec: ModelSpec) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    local, cache = hub_search_paths(spec.repo_id)
    searched = [f"local dir {local}", f"Hugging Face cache {cache} (HF_HUB_CACHE)"]
    candidates = [local] if local.is_dir() else []
    try:
        candidates.append(Path(snapshot_download(spec.repo_id, revision=spec.revision, local_files_only=True)))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        pass
    for root in candidates:
        target = root / spec.subfolder if spec.subfolder else root
        if target.exists():
            return target
    hint = f"found {', '.join(map(str, candidates))} but without its subfolder '{spec.subfolder}'" if candidates else ""
    raise MissingWeights(role, spec.repo_id, spec.revision, searched, hint)


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


# ---------------------------------------------------------------------------------------
# Loading (cached per process)

_CACHE: dict[tuple[str, str, str], Any] = {}


def default_dtype(device: str) -> "Any":
    """bf16 on GPU, fp32 on CPU."""
    import torch

    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def load(role: str, preset: str = "default", *, device: str = "cpu", dtype: Any = None) -> Any:
    """Load ``role`` with its loader's ``from_pretrained`` (local files only), cast to
    ``dtype`` (default :func:`default_dtype`) and move to ``device``. The same
    ``(path, dtype, device)`` returns the same instance for the life of the process."""
    import torch

    spec = get_spec(role, preset)
    path = resolve(role, preset)
    dtype = default_dtype(device) if dtype is None else dtype
    key = (str(path), str(dtype) if spec.is_module else "-", str(device) if spec.is_module else "-")
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        module_name, class_name = spec.loader.split(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        kwargs = dict(spec.load_kwargs)
        if spec.is_module:
            kwargs["dtype" if module_name.startswith("transformers") else "torch_dtype"] = dtype
        kwargs.setdefault("local_files_only", True)
        component = cls.from_pretrained(str(path), **kwargs)
        if spec.is_module and isinstance(component, torch.nn.Module):
            component = component.to(device).eval().requires_grad_(False)
        _CACHE[key] = component
        return component


def release(role: str, preset: str = "default") -> None:
    """Drop every cached instance of ``role`` (all dtypes and devices) and free memory.
    Callers must drop their own references too."""
    path = str(resolve(role, preset))
    with _LOCK:
        for key in [key for key in _CACHE if key[0] == path]:
            del _CACHE[key]
    _free_memory()


def clear_cache() -> None:
    """Forget every loaded component (tests; switching presets)."""
    with _LOCK:
        _CACHE.clear()
    _free_memory()


def loaded() -> list[str]:
    """Paths of the components loaded now (the server's health route reports them)."""
    return sorted({key[0] for key in _CACHE})


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------
# Memory: offload presets


def weight_bytes(role: str, preset: str = "default") -> int:
    """Bytes of ``role``'s weight files on disk (``*.safetensors``, else ``*.bin``): the
    memory it takes in its stored dtype (bf16 for FLUX and Qwen2.5-VL), known before loading
    so an offload preset can be chosen without a CPU copy."""
    directory = resolve(role, preset)
    files = list(directory.glob("*.safetensors")) or list(directory.glob("*.bin"))
    return sum(path.stat().st_size for path in files)


def parameter_bytes(module: Any) -> int:
    """Bytes of a module's parameters and buffers."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def choose_offload(device: str, resident_bytes: int, largest_bytes: int, activation_bytes: int = 0) -> str:
    """Pick an offload preset from free VRAM: ``none`` when everything fits (with 10 %
    headroom), ``model`` when the largest model plus activations fits (one resident at a
    time), else ``group`` (block-level streaming). Always ``none`` off CUDA."""
    import torch

    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return "none"
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    if 1.1 * (resident_bytes + activation_bytes) < free:
        return "none"
    if 1.1 * (largest_bytes + activation_bytes) < free:
        return "model"
    return "group"


class Placement:
    """Puts the big models of one product on the device according to an offload preset.

    * ``none`` — every model on the device.
    * ``model`` — models stay on the CPU; :meth:`activate` moves one to the device and
      evicts the previous one (one resident at a time; experts call it before each
      forward). Simple and safe with several experts, unlike chained CPU-offload hooks.
    * ``group`` — diffusers ``apply_group_offloading(block_level, 1 block per group,
      use_stream)``: blocks stream in while the previous one computes.
    * ``sequential`` — ``apply_group_offloading(leaf_level)``: smallest memory, slowest.

    ``fp8_storage`` enables ``enable_layerwise_casting(float8_e4m3fn -> compute dtype)``
    on diffusers models (halves transformer memory; combines with group offloading).
    """

    def __init__(self, preset: str, device: str, *, fp8_storage: bool = False) -> None:
        if preset not in OFFLOAD_PRESETS or preset == "auto":
            raise ValueError(f"offload: unknown preset {preset!r}; choose one of none, model, group, sequential")
        self.preset, self.device, self.fp8_storage = preset, device, fp8_storage
        self._active: Any = None
        self._placed: set[int] = set()

    @classmethod
    def for_sizes(cls, preset: str, device: str, sizes: list[int], *, activation_bytes: int = 0, fp8_storage: bool = False) -> "Placement":
        """Resolve ``auto`` from the models' sizes in bytes (:func:`weight_bytes`; halved
        under ``fp8_storage``), then build the placement."""
        if preset == "auto":
            sizes = [size // 2 if fp8_storage else size for size in sizes] or [0]
            preset = choose_offload(device, sum(sizes), max(sizes), activation_bytes)
        return cls(preset, device, fp8_storage=fp8_storage)

    @classmethod
    def for_modules(cls, preset: str, device: str, modules: list[Any], *, activation_bytes: int = 0, fp8_storage: bool = False) -> "Placement":
        """:meth:`for_sizes` with the sizes of loaded modules."""
        return cls.for_sizes(preset, device, [parameter_bytes(module) for module in modules], activation_bytes=activation_bytes, fp8_storage=fp8_storage)

    def place(self, module: Any) -> Any:
        """Prepare ``module`` once (idempotent per instance); returns it."""
        if id(module) in self._placed:
            return module
        self._placed.add(id(module))
        if self.fp8_storage and hasattr(module, "enable_layerwise_casting"):
            import torch

            module.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=module.dtype)
        on_cuda = str(self.device).startswith("cuda")
        if self.preset in ("group", "sequential") and on_cuda:
            from diffusers.hooks import apply_group_offloading

            module.to("cpu")
            if self.preset == "group":
                apply_group_offloading(module, onload_device=self.device, offload_type="block_level", num_blocks_per_group=1, use_stream=True)
            else:
                apply_group_offloading(module, onload_device=self.device, offload_type="leaf_level")
        elif self.preset == "model":
            module.to("cpu")
        else:
            module.to(self.device)
        return module

    def activate(self, module: Any) -> None:
        """Call before ``module``'s forward: under ``model`` offload, bring it to the device
        and send the previously active one back to the CPU."""
        if self.preset != "model" or self._active is module:
            return
        if self._active is not None:
            self._active.to("cpu")
        module.to(self.device)
        self._active = module

    def describe(self) -> dict[str, Any]:
        return {"offload": self.preset, "device": str(self.device), "fp8_storage": self.fp8_storage}


@contextlib.contextmanager
def temporary_env(**values: str) -> Any:
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


def roles_of(family: str, preset: str = "default") -> list[str]:
    """Role names a family defines for ``preset`` (falling back to ``default``)."""
    presets = families()[family]
    return sorted(set(presets.get("default", {})) | set(presets.get(preset, {})))


Builder = Callable[[Path], None]

"""Loaded model instances: one per weights, whatever the device or placement, evicted LRU.

The key is what the weights are — the resolved directory and the dtype — never the device or
the offload (issue 9, finding 4): asking for the same role on another device moves the one
instance (unless it carries offload hooks or fp8 storage, which stay as placed), and placing
it differently re-places that instance (:func:`~poe_backend.experts.placement.apply_placement`;
a change of fp8 storage reloads it from disk, since casting cannot be undone).

Lifetime: every task run starts with :meth:`ModelCache.ensure_only` (from
:mod:`poe_backend.tasks.base`) with the roles the job needs, so the previous job's other
models are freed before anything loads; :meth:`ModelCache.evict_lru` frees least recently
used entries until the cached bytes fit a budget; :meth:`ModelCache.release` drops one role
(text encoders after encoding). Freeing runs ``gc.collect`` and, on CUDA,
``torch.cuda.empty_cache``; callers must drop their own references too.
"""

from __future__ import annotations

import gc
import importlib
import itertools
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

from poe_backend.experts.lookup import resolve
from poe_backend.experts.placement import PLACEMENT_NAMES, PlacementChangeNeedsReload, PlacementName, apply_placement, parameter_bytes, placement_of
from poe_backend.experts.specs import ModelSpec, get_spec

_HOOKED = tuple(name for name in PLACEMENT_NAMES if name != "resident")


def default_dtype(device: str) -> torch.dtype:
    """bf16 on GPU, fp32 on CPU."""
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


@dataclass
class CachedModel:
    """One loaded component: the roles that asked for it, its size in bytes (0 for
    tokenizers and processors) and when it was last used (a counter)."""

    key: tuple[str, str]
    component: Any
    size_bytes: int
    roles: set[str] = field(default_factory=set)
    last_used: int = 0


class ModelCache:
    """Loaded components keyed by ``(resolved path, dtype)``; thread-safe."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], CachedModel] = {}
        self._lock = threading.RLock()
        self._clock = itertools.count(1)

    def load(self, role: str, preset: str = "default", *, device: str = "cpu", dtype: torch.dtype | None = None) -> Any:
        """``role`` loaded with its loader's ``from_pretrained`` (local files only), cast to
        ``dtype`` (default :func:`default_dtype`) and on ``device`` — the cached instance
        when these weights are loaded already (moved to ``device`` unless it carries
        offload hooks or fp8 storage)."""
        spec = get_spec(role, preset)
        dtype = default_dtype(device) if dtype is None else dtype
        with self._lock:
            entry = self._entry(role, preset, spec, dtype, device)
            component = entry.component
            if spec.is_module and placement_of(component) not in _HOOKED and not _is_on(component, device):
                component.to(device)
                component.__dict__.pop("_poe_placement", None)
            return component

    def place(self, role: str, preset: str, name: PlacementName, device: str, *, dtype: torch.dtype | None = None) -> torch.nn.Module:
        """``role`` loaded once and placed as ``name`` on ``device`` (a no-op when it is
        placed so already; reloaded from disk when its fp8 storage changes)."""
        spec = get_spec(role, preset)
        dtype = default_dtype(device) if dtype is None else dtype
        with self._lock:
            entry = self._entry(role, preset, spec, dtype, device if name == "resident" else "cpu")
            try:
                return apply_placement(entry.component, name, device)
            except PlacementChangeNeedsReload:
                self._drop(entry.key)
                entry = self._entry(role, preset, spec, dtype, "cpu")
                return apply_placement(entry.component, name, device)

    def _entry(self, role: str, preset: str, spec: ModelSpec, dtype: torch.dtype, device: str) -> CachedModel:
        path = resolve(role, preset)
        key = (str(path), str(dtype) if spec.is_module else "-")
        entry = self._entries.get(key)
        if entry is None:
            component = _from_pretrained(spec, str(path), dtype, device)
            size = parameter_bytes(component) if isinstance(component, torch.nn.Module) else 0
            entry = self._entries[key] = CachedModel(key, component, size)
        entry.roles.add(role)
        entry.last_used = next(self._clock)
        return entry

    def ensure_only(self, roles_needed: Iterable[str]) -> list[str]:
        """Drop every component that none of ``roles_needed`` asked for; returns the
        dropped paths. Call at the start of a job, before loading."""
        needed = set(roles_needed)
        with self._lock:
            dropped = [key for key, entry in self._entries.items() if not entry.roles & needed]
            for key in dropped:
                self._drop(key)
        if dropped:
            free_memory()
        return [key[0] for key in dropped]

    def evict_lru(self, max_bytes: int, *, keep: Iterable[str] = ()) -> list[str]:
        """Drop least recently used components until the cached bytes are at most
        ``max_bytes``, never one asked for by a role in ``keep``; returns the dropped paths."""
        kept = set(keep)
        dropped = []
        with self._lock:
            for entry in sorted(self._entries.values(), key=lambda item: item.last_used):
                if self.cached_bytes() <= max_bytes:
                    break
                if entry.size_bytes and not entry.roles & kept:
                    self._drop(entry.key)
                    dropped.append(entry.key[0])
        if dropped:
            free_memory()
        return dropped

    def release(self, role: str, preset: str = "default") -> None:
        """Drop every cached instance of ``role``'s weights (all dtypes) and free memory."""
        path = str(resolve(role, preset))
        with self._lock:
            for key in [key for key in self._entries if key[0] == path]:
                self._drop(key)
        free_memory()

    def give_back(self, role: str, preset: str = "default") -> None:
        """Free ``role``'s memory now, although a job's experts may still reference the
        module: its parameters and buffers move to the meta device (no copy, no host RAM)
        and it leaves the cache, so the next job loads it afresh. For the sampling models
        before a decode that does not fit beside them (:class:`memory_plan.DecodePlan`).
        A streamed (group/leaf-offloaded) module holds no device memory between forwards
        and diffusers refuses to move it, so it only leaves the cache."""
        path = str(resolve(role, preset))
        with self._lock:
            for key in [key for key in self._entries if key[0] == path]:
                component = self._entries[key].component
                streamed = (placement_of(component) or "").removeprefix("fp8_") in ("group_offload", "leaf_offload")
                if isinstance(component, torch.nn.Module) and not streamed:
                    component.to("meta")
                self._drop(key)
        free_memory()

    def clear(self) -> None:
        """Forget every loaded component (tests; switching presets)."""
        with self._lock:
            for key in list(self._entries):
                self._drop(key)
        free_memory()

    def cached_bytes(self) -> int:
        """Bytes of every cached module's parameters and buffers."""
        return sum(entry.size_bytes for entry in self._entries.values())

    def resident_bytes(self, roles: Iterable[str], device: str) -> int:
        """Bytes of the cached modules of ``roles`` placed ``resident``/``fp8_resident`` on
        ``device``: memory a new plan for those roles may count as free (it is theirs)."""
        wanted = set(roles)
        return sum(
            parameter_bytes(entry.component)
            for entry in self._entries.values()
            if entry.roles & wanted and getattr(entry.component, "_poe_placement", None) in (("resident", str(device)), ("fp8_resident", str(device)))
        )

    def loaded_models(self) -> list[str]:
        """Paths of the components loaded now (the server's health route reports them)."""
        return sorted({key[0] for key in self._entries})

    def _drop(self, key: tuple[str, str]) -> None:
        self._entries.pop(key)


def _from_pretrained(spec: ModelSpec, path: str, dtype: torch.dtype, device: str) -> Any:
    module_name, class_name = spec.loader.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    kwargs = dict(spec.load_kwargs)
    if spec.is_module:
        kwargs["dtype" if module_name.startswith("transformers") else "torch_dtype"] = dtype
    kwargs.setdefault("local_files_only", True)
    component = cls.from_pretrained(path, **kwargs)
    if spec.is_module and isinstance(component, torch.nn.Module):
        component = component.to(device).eval().requires_grad_(False)
    return component


def _is_on(module: torch.nn.Module, device: str) -> bool:
    """Whether ``module``'s first parameter is on ``device`` (``"cuda"`` matches any index)."""
    parameter = next(module.parameters(), None)
    actual, wanted = (torch.device("cpu") if parameter is None else parameter.device), torch.device(device)
    return actual.type == wanted.type and (wanted.index is None or actual.index == wanted.index)


def free_memory() -> None:
    """``gc.collect`` and, on CUDA, return cached blocks to the driver."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


#: The process's cache (the server runs one job at a time through it).
MODEL_CACHE = ModelCache()

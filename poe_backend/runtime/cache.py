"""Loaded model instances: one per weights, whatever the device or placement, and the one place
that makes room on a device before anything is loaded onto it.

The key is what the weights are — the resolved directory and the dtype — never the device or
the offload: asking for the same role on another device moves the one instance (unless it
carries offload hooks or fp8 storage, which stay as placed), and placing it differently
re-places that instance (:func:`~poe_backend.runtime.placement.apply_placement`; a change of
fp8 storage reloads it from disk, since casting cannot be undone).

Memory by need (ComfyUI's ``free_memory(required, device)``): before *any* load or move onto a
device — transformer, encoder, VAE, reward model, layout parser — :meth:`ModelCache.free_memory`
evicts least-recently-used models until the cached models' bytes on that device, plus the
load, plus a working reserve, fit the device's budget. Models the running job has used are
never evicted (:meth:`ModelCache.begin_job` starts a job: it drops models of roles the job
does not name and marks the others as not yet used). An evicted module's tensors move to the
meta device, so its memory comes back even where a stale reference holds the module.
Encoders load with ``fallback_device="cpu"`` (:meth:`ModelCache.load_encoders`): when they
cannot fit even after eviction they run on the CPU; any other load that cannot fit raises
:class:`DeviceMemoryError` naming what holds the device.

The budget is an input: :meth:`ModelCache.set_budget` (tests give a few MB on the CPU), else
on CUDA the cached models' bytes plus what the device has free now, with the planner's
reserve (``planner.reserve_bytes``); off CUDA without a budget nothing is evicted by need.

Lifetime otherwise: :meth:`ModelCache.release` drops one role (text encoders after
encoding); :meth:`ModelCache.give_back` frees a module a job still references (the sampling
models before a decode that does not fit beside them). Freeing runs ``gc.collect`` and, on
CUDA, empties torch's device cache and its pinned-host cache, and unregisters the packed
host buffers of streamed models (:func:`~poe_backend.runtime.placement.unpin`).

Cancellation: every load is preceded and every fresh load followed by a
:func:`~poe_backend.sampling.run.checkpoint`, so a cancelled job stops between two
components, never inside one: what it loaded stays cached whole for the next job, what it had
not loaded is absent.
"""

from __future__ import annotations

import gc
import importlib
import itertools
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

from poe_backend.runtime import planner
from poe_backend.models.lookup import parameter_count, resolve, weight_bytes
from poe_backend.runtime.placement import PLACEMENT_NAMES, PlacementName, apply_placement, device_key, needs_reload, pinned_bytes, placement_of, unpin
from poe_backend.models.specs import MissingWeights, ModelSpec, get_spec
from poe_backend.sampling.run import checkpoint

_HOOKED = tuple(name for name in PLACEMENT_NAMES if name != "resident")


class DeviceMemoryError(MemoryError):
    """A model does not fit on its device even after every model the job is not using was
    evicted; the message names the model, the bytes and what holds the device."""


def default_dtype(device: str) -> torch.dtype:
    """bf16 on GPU, fp32 on CPU."""
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


@dataclass(frozen=True)
class DeviceBudget:
    """What the cached models may hold on one device: ``total_bytes`` for models, a load
    and the working reserve ``reserve_bytes`` together."""

    total_bytes: int
    reserve_bytes: int


@dataclass
class CachedModel:
    """One loaded component: the roles that asked for it, when it was last used (a counter)
    and whether the running job has used it (then it is never evicted by need)."""

    key: tuple[str, str]
    component: Any
    roles: set[str] = field(default_factory=set)
    last_used: int = 0
    in_use: bool = True

    def bytes_on(self, device: str) -> int:
        """Bytes of this component's tensors on ``device`` (0 for tokenizers, processors)."""
        if not isinstance(self.component, torch.nn.Module):
            return 0
        tensors = {id(tensor): tensor for tensor in [*self.component.parameters(), *self.component.buffers()]}
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors.values() if not tensor.is_meta and device_key(tensor.device) == device)


class ModelCache:
    """Loaded components keyed by ``(resolved path, dtype)``; thread-safe."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], CachedModel] = {}
        self._lock = threading.RLock()
        self._clock = itertools.count(1)
        self._budgets: dict[str, DeviceBudget] = {}
        #: device -> the most bytes the cached models held on it after any load.
        self.peak_bytes: dict[str, int] = {}

    # -- budgets -------------------------------------------------------------------------

    def set_budget(self, device: str, total_bytes: int | None, *, reserve_bytes: int = 0) -> None:
        """Give ``device`` an explicit budget (None: back to the default, detected on CUDA,
        none elsewhere)."""
        key = device_key(device)
        if total_bytes is None:
            self._budgets.pop(key, None)
        else:
            self._budgets[key] = DeviceBudget(total_bytes, reserve_bytes)

    def budget(self, device: str) -> DeviceBudget | None:
        """``device``'s budget: the explicit one, else on CUDA the cached models' bytes there
        plus what the process can still allocate (:func:`planner.cuda_free_bytes`) with
        the planner's reserve; None (unlimited) off CUDA."""
        key = device_key(device)
        if key in self._budgets:
            return self._budgets[key]
        if not key.startswith("cuda") or not torch.cuda.is_available():
            return None
        free = planner.cuda_free_bytes(key)
        return DeviceBudget(self.device_bytes(key) + free, planner.reserve_bytes(free))

    def device_bytes(self, device: str) -> int:
        """Bytes the cached components hold on ``device`` now (measured on the tensors)."""
        key = device_key(device)
        return sum(entry.bytes_on(key) for entry in self._entries.values())

    def reclaimable_bytes(self, device: str, *, keep: Iterable[str] = ()) -> int:
        """Bytes on ``device`` that :meth:`free_memory` could evict, plus those of ``keep``'s
        roles (a plan for those roles counts them as its own)."""
        key, kept = device_key(device), set(keep)
        return sum(entry.bytes_on(key) for entry in self._entries.values() if not entry.in_use or entry.roles & kept)

    def free_memory(self, required_bytes: int, device: str) -> list[str]:
        """Evict models the running job has not used, least recently used first, until
        ``required_bytes`` more plus the reserve fit ``device``'s budget; returns the evicted
        paths. Evicts nothing where the device has no budget, or when even evicting every
        such model would not make the room (the caller falls back or fails: nothing is lost
        for nothing)."""
        budget = self.budget(device)
        return [] if budget is None else self._evict_for(required_bytes, device_key(device), budget)

    def evict_unused(self, device: str, *, keep: Iterable[str] = ()) -> list[str]:
        """Evict every model on ``device`` the running job has not used, except ``keep``'s
        roles: what a plan that counted :meth:`reclaimable_bytes` as free relies on."""
        key, kept = device_key(device), set(keep)
        with self._lock:
            victims = [entry for entry in self._entries.values() if not entry.in_use and not entry.roles & kept and entry.bytes_on(key)]
            for entry in victims:
                self._evict(entry)
        if victims:
            empty_caches()
        return [entry.key[0] for entry in victims]

    def _evict_for(self, required_bytes: int, key: str, budget: DeviceBudget) -> list[str]:
        with self._lock:
            candidates = sorted((entry for entry in self._entries.values() if not entry.in_use and entry.bytes_on(key)), key=lambda item: item.last_used)
            reclaimable = sum(entry.bytes_on(key) for entry in candidates)
            if self._fits(required_bytes, key, budget) or not self._fits(required_bytes - reclaimable, key, budget):
                return []
            evicted = []
            for entry in candidates:
                self._evict(entry)
                evicted.append(entry.key[0])
                if self._fits(required_bytes, key, budget):
                    break
        empty_caches()
        return evicted

    def _fits(self, required_bytes: int, device: str, budget: DeviceBudget | None) -> bool:
        return budget is None or self.device_bytes(device) + required_bytes + budget.reserve_bytes <= budget.total_bytes

    def _make_room(self, role: str, required_bytes: int, device: str) -> None:
        """Evict for ``required_bytes`` (:meth:`free_memory`), judged against one budget read
        before evicting (so the reserve does not move), then :class:`DeviceMemoryError` when
        it still does not fit."""
        key, budget = device_key(device), self.budget(device)
        if budget is None:
            return
        self._evict_for(required_bytes, key, budget)
        if not self._fits(required_bytes, key, budget):
            held = ", ".join(f"{'/'.join(sorted(entry.roles))} {entry.bytes_on(key) / 2**20:.1f} MiB" for entry in self._entries.values() if entry.bytes_on(key))
            raise DeviceMemoryError(
                f"loading {role} needs {required_bytes / 2**20:.1f} MiB on {device} but its budget of {budget.total_bytes / 2**20:.1f} MiB "
                f"(reserve {budget.reserve_bytes / 2**20:.1f}) is held by models this job uses ({held or 'none'}): "
                "lower the resolution, frames or particles, allow fp8 storage, or use the preview preset"
            )

    # -- loading -------------------------------------------------------------------------

    def load(self, role: str, preset: str = "default", *, device: str = "cpu", dtype: torch.dtype | None = None, fallback_device: str | None = None) -> Any:
        """``role`` loaded with its loader's ``from_pretrained`` (local files only), cast to
        ``dtype`` (default :func:`default_dtype`) and on ``device`` — the cached instance
        when these weights are loaded already (moved to ``device`` unless it carries
        offload hooks or fp8 storage). Room is made first (:meth:`free_memory`); when the
        model cannot fit, it loads on ``fallback_device`` if given, else
        :class:`DeviceMemoryError`."""
        spec = get_spec(role, preset)
        dtype = default_dtype(device) if dtype is None else dtype
        with self._lock:
            key = self._key(role, preset, spec, dtype)
            entry = self._entries.get(key)
            hooked = entry is not None and placement_of(entry.component) in _HOOKED
            if spec.is_module and not hooked and not (entry is not None and _is_on(entry.component, device)):
                device = self._room_or_fallback(role, preset, [(role, key, dtype)], device, fallback_device)
            return self._load(role, key, spec, dtype, device)

    def _load(self, role: str, key: tuple[str, str], spec: ModelSpec, dtype: torch.dtype, device: str) -> Any:
        """Load or move ``role`` (cache key ``key``) onto ``device``; the caller made room."""
        component = self._entry(role, key, spec, dtype, device).component
        if spec.is_module and placement_of(component) not in _HOOKED and not _is_on(component, device):
            component.to(device)
            component.__dict__.pop("_poe_placement", None)
        self._note_peak(device)
        return component

    def load_encoders(self, roles: Iterable[str], preset: str, *, device: str, dtype: torch.dtype) -> tuple[list[Any], str]:
        """Load encoders that run together (text encoders with their tokenizers) on one
        device: ``device`` when all fit after :meth:`free_memory`, else the CPU. Returns the
        components in ``roles`` order and the device they are on."""
        specs = {role: get_spec(role, preset) for role in roles}
        keys = {role: self._key(role, preset, spec, dtype) for role, spec in specs.items()}
        modules = [(role, keys[role], dtype) for role, spec in specs.items() if spec.is_module]
        with self._lock:
            chosen = self._room_or_fallback(", ".join(role for role, _, _ in modules), preset, modules, device, "cpu")
            return [self._load(role, keys[role], spec, dtype, chosen) for role, spec in specs.items()], chosen

    def _room_or_fallback(self, name: str, preset: str, modules: list[tuple[str, tuple[str, str], torch.dtype]], device: str, fallback_device: str | None) -> str:
        """Make room for ``modules`` (role, cache key, dtype) on ``device``: ``device``, or
        ``fallback_device`` when they cannot fit (:class:`DeviceMemoryError` without one)."""
        required = sum(self._added_bytes(key, self._file_bytes(role, preset, dtype), device) for role, key, dtype in modules)
        try:
            self._make_room(name, required, device)
        except DeviceMemoryError:
            if fallback_device is None:
                raise
            return fallback_device
        return device

    def place(self, role: str, preset: str, name: PlacementName, device: str, *, dtype: torch.dtype | None = None) -> torch.nn.Module:
        """``role`` loaded once and placed as ``name`` on ``device`` (a no-op when it is
        placed so already; reloaded from disk when its fp8 storage changes). A resident
        placement makes room for the model first; a streamed one holds nothing on the device
        between forwards (the planner counted its blocks)."""
        spec = get_spec(role, preset)
        dtype = default_dtype(device) if dtype is None else dtype
        with self._lock:
            key = self._key(role, preset, spec, dtype)
            entry = self._entries.get(key)
            if name.removeprefix("fp8_") == "resident" and not (entry is not None and getattr(entry.component, "_poe_placement", None) == (name, device_key(device))):
                stored = planner.installed_size(role, preset).stored_bytes(name.startswith("fp8_")) * torch.finfo(dtype).bits // 16
                self._make_room(role, self._added_bytes(key, stored, device), device)
            load_device = device if name == "resident" else "cpu"
            entry = self._entry(role, key, spec, dtype, load_device)
            if needs_reload(entry.component, name):  # fp8 storage changes: the old copy goes before the new one loads
                self._evict(entry)
                empty_caches()
                entry = self._entry(role, key, spec, dtype, load_device)
            placed = apply_placement(entry.component, name, device)
            self._note_peak(device)
            return placed

    @staticmethod
    def _file_bytes(role: str, preset: str, dtype: torch.dtype) -> int:
        """Bytes ``role`` takes in ``dtype``, from its files' headers (the files' size where
        they are not safetensors)."""
        count = parameter_count(role, preset)
        return weight_bytes(role, preset) if count is None else count * (torch.finfo(dtype).bits // 8)

    def _added_bytes(self, key: tuple[str, str], size_bytes: int, device: str) -> int:
        """What putting a model of ``size_bytes`` (cache key ``key``) on ``device`` adds
        there: its size less what its cached instance already holds on that device."""
        entry = self._entries.get(key)
        return max(0, size_bytes - (0 if entry is None else entry.bytes_on(device_key(device))))

    def _key(self, role: str, preset: str, spec: ModelSpec, dtype: torch.dtype) -> tuple[str, str]:
        return (str(resolve(role, preset)), str(dtype) if spec.is_module else "-")

    def _entry(self, role: str, key: tuple[str, str], spec: ModelSpec, dtype: torch.dtype, device: str) -> CachedModel:
        """The cached entry of ``key``, loaded first when missing. A cancelled job
        (:func:`~poe_backend.sampling.run.checkpoint`) stops before the load, or after it
        with the loaded component cached: a component is either wholly loaded and kept for
        the next job, or absent."""
        checkpoint()
        entry = self._entries.get(key)
        loading = entry is None
        if loading:
            entry = self._entries[key] = CachedModel(key, _from_pretrained(spec, key[0], dtype, device))
        entry.roles.add(role)
        entry.last_used = next(self._clock)
        entry.in_use = True
        if loading:
            checkpoint()
        return entry

    def _note_peak(self, device: str) -> None:
        key = device_key(device)
        self.peak_bytes[key] = max(self.peak_bytes.get(key, 0), self.device_bytes(key))

    # -- lifetime ------------------------------------------------------------------------

    def begin_job(self, roles_needed: Iterable[str], preset: str) -> list[str]:
        """Start a job with models of ``preset``: drop every component that is not the files
        of one of ``roles_needed`` in that preset (the previous job's other models, another
        preset's copy of a role) and mark the rest as not yet used by this job, so that
        :meth:`free_memory` may evict them; returns the dropped paths."""
        needed = set()
        for role in roles_needed:
            try:
                needed.add(str(resolve(role, preset)))
            except MissingWeights:  # not on this machine: the task names it when it checks
                continue
        with self._lock:
            dropped = [key for key in self._entries if key[0] not in needed]
            for key in dropped:
                self._drop(key)
            for entry in self._entries.values():
                entry.in_use = False
        if dropped:
            empty_caches()
        return [key[0] for key in dropped]

    def release(self, role: str, preset: str = "default") -> None:
        """Drop every cached instance of ``role``'s weights (all dtypes) and free memory."""
        path = str(resolve(role, preset))
        with self._lock:
            for key in [key for key in self._entries if key[0] == path]:
                self._drop(key)
        empty_caches()

    def give_back(self, role: str, preset: str = "default") -> None:
        """Free ``role``'s memory now, although a job's experts may still reference the
        module (:meth:`_evict`); the next job loads it afresh. For the sampling models
        before a decode that does not fit beside them (:class:`planner.DecodePlan`)."""
        path = str(resolve(role, preset))
        with self._lock:
            for entry in [entry for key, entry in self._entries.items() if key[0] == path]:
                self._evict(entry)
        empty_caches()

    def clear(self) -> None:
        """Forget every loaded component (tests; switching presets)."""
        with self._lock:
            for key in list(self._entries):
                self._drop(key)
        empty_caches()

    def pinned_bytes(self) -> int:
        """Host bytes page-locked for the cached streamed models (their packed offload groups)."""
        return sum(pinned_bytes(entry.component) for entry in self._entries.values() if isinstance(entry.component, torch.nn.Module))

    def loaded_models(self) -> list[str]:
        """Paths of the components loaded now (the server's health route reports them)."""
        return sorted({key[0] for key in self._entries})

    def _evict(self, entry: CachedModel) -> None:
        """Drop ``entry`` and free its memory even where its module is still referenced: its
        tensors move to the meta device (no copy). A streamed (group/leaf-offloaded) module
        holds no device memory between forwards and diffusers refuses to move it: it keeps
        its host copy, no longer page-locked, until its last reference goes."""
        component = entry.component
        streamed = (placement_of(component) or "").removeprefix("fp8_") in ("group_offload", "leaf_offload")
        self._drop(entry.key)
        if isinstance(component, torch.nn.Module) and not streamed:
            component.to("meta")

    def _drop(self, key: tuple[str, str]) -> None:
        entry = self._entries.pop(key)
        if isinstance(entry.component, torch.nn.Module):
            unpin(entry.component)


def _from_pretrained(spec: ModelSpec, path: str, dtype: torch.dtype, device: str) -> Any:
    """Load with the spec's loader. Modules load straight onto their device (``device_map``):
    no transient host copy of a whole model bound for a GPU."""
    module_name, class_name = spec.loader.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    kwargs = dict(spec.load_kwargs)
    if spec.is_module:
        kwargs["dtype" if module_name.startswith("transformers") else "torch_dtype"] = dtype
        kwargs["device_map"] = device_key(device)
    kwargs.setdefault("local_files_only", True)
    component = cls.from_pretrained(path, **kwargs)
    if spec.is_module and isinstance(component, torch.nn.Module):
        component = component.eval().requires_grad_(False)
    return component


def _is_on(module: torch.nn.Module, device: str) -> bool:
    """Whether ``module``'s first parameter is on ``device`` (``"cuda"`` matches any index)."""
    parameter = next(module.parameters(), None)
    actual, wanted = (torch.device("cpu") if parameter is None else parameter.device), torch.device(device)
    return actual.type == wanted.type and (wanted.index is None or actual.index == wanted.index)


def empty_caches() -> None:
    """``gc.collect`` and, on CUDA, return cached device blocks to the driver and release
    torch's cached pinned host blocks (``empty_host_cache``)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.accelerator.empty_host_cache()


#: The process's cache (the server runs one job at a time through it).
MODEL_CACHE = ModelCache()

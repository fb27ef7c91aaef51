"""Putting loaded modules on a device according to a per-role placement decision.

The decision is made by :func:`poe_backend.runtime.planner.plan` (the one place that
decides); this module applies it. A name (:data:`PLACEMENT_NAMES`) is the planner's
placement, prefixed ``fp8_`` when its ``fp8_storage`` is set (:func:`placement_name`):

* ``resident`` — the whole module on the device.
* ``group_offload`` — diffusers ``apply_group_offloading(block_level, 1 block per group)``:
  one transformer block at a time on the device, the next streamed in while one computes.
* ``leaf_offload`` — ``apply_group_offloading(leaf_level)``: smallest memory, slowest.
* ``fp8_...`` — the same, weights stored in float8_e4m3fn and cast per layer to the compute
  dtype (diffusers ``enable_layerwise_casting``, applied before any offload hooks; FLUX 12B:
  ~24 -> ~12 GB).

Host memory: streamed weights live in page-locked host memory, so that each block's copy to
the device is asynchronous, and exactly their size is locked. torch's pinned allocator
(``Tensor.pin_memory``, ``CachingHostAllocator``) rounds every block up to a power of two
(FLUX's 22.2 GiB transformer pinned parameter by parameter takes 34.7 GiB) and keeps freed
blocks until ``empty_host_cache``. :func:`pin_offload_groups` instead packs each offload
group's tensors (one transformer block, or everything outside the blocks) into one
contiguous host buffer and registers it with CUDA (``cudaHostRegister``): the locked bytes
are the weights' bytes, which is what the planner counts; the transient extra host memory is
one group. diffusers' hooks (``use_stream=True``) keep ``tensor.pin_memory()`` of every
tensor, which returns the registered tensor itself: one host copy. :func:`unpin` unregisters
the buffers when the model leaves the cache.

Hooks are applied once per module: a module remembers its placement, applying the same one
again does nothing, and a different one removes the group-offload hooks before applying the
new one. Switching fp8 storage cannot be undone in place (the weights were cast); the model
cache reloads the module instead (:class:`PlacementChangeNeedsReload`).

Whole-model moves per evaluation are never planned: the planner chooses between the
decisions above only (its rule 1; swapping two alternating FLUX transformers over PCIe
costs several times their compute per evaluation: README.md, Measurements, GPU).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch

from poe_backend.runtime.planner import Plan, RolePlan

PlacementName = Literal["resident", "group_offload", "leaf_offload", "fp8_resident", "fp8_group_offload", "fp8_leaf_offload"]
PLACEMENT_NAMES: tuple[str, ...] = ("resident", "group_offload", "leaf_offload", "fp8_resident", "fp8_group_offload", "fp8_leaf_offload")
FP8_PREFIX = "fp8_"


def device_key(device: str | torch.device) -> str:
    """A device's canonical name: ``"cpu"``, ``"cuda:0"`` (``"cuda"`` is the current CUDA
    device, index 0 where CUDA is absent)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device() if torch.cuda.is_available() else 0}"
    return str(device)


class PlacementChangeNeedsReload(RuntimeError):
    """The module was placed with a different fp8 storage; reload it from disk first."""


def placement_name(role_plan: RolePlan) -> PlacementName:
    """The name of a planner's :class:`~poe_backend.runtime.planner.RolePlan`."""
    return (FP8_PREFIX if role_plan.fp8_storage else "") + role_plan.placement


@dataclass(frozen=True)
class PlacementPlan:
    """The placements of one job's big models as applied (role -> name), why, and the
    planner's :class:`~poe_backend.runtime.planner.Plan` when ``auto`` decided (its
    estimated peaks, decode settings and reasons)."""

    placements: Mapping[str, PlacementName]
    weight_bytes: Mapping[str, int]
    reason: str
    planned: Plan | None = None

    def to_json(self) -> dict[str, Any]:
        planned = None if self.planned is None else json.loads(self.planned.to_json())
        return {"placements": dict(self.placements), "weight_bytes": dict(self.weight_bytes), "reason": self.reason, "plan": planned}


def apply_placement(module: torch.nn.Module, name: PlacementName, device: str) -> torch.nn.Module:
    """Place ``module`` (a diffusers model for the fp8 and offload names) once; returns it.

    The same ``(name, device)`` again is a no-op; another one removes this module's
    group-offload hooks first. Raises :class:`PlacementChangeNeedsReload` when the fp8
    storage would change."""
    if name not in PLACEMENT_NAMES:
        raise ValueError(f"placement: unknown {name!r}; choose one of {', '.join(PLACEMENT_NAMES)}")
    previous = getattr(module, "_poe_placement", None)
    if previous == (name, device_key(device)):
        return module
    fp8, base = name.startswith(FP8_PREFIX), name.removeprefix(FP8_PREFIX)
    if needs_reload(module, name):
        raise PlacementChangeNeedsReload(f"module placed as {previous[0]}, now {name}: reload it")
    module.__dict__.pop("_poe_placement", None)  # a failure below leaves no stale name behind
    if previous is not None and previous[0].removeprefix(FP8_PREFIX) != "resident":
        _remove_group_offloading(module)
    if fp8 and previous is None:
        module.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=module.dtype)
    if base == "resident":
        unpin(module)
        module.to(device)
    else:
        _apply_group_offloading(module, base, device)
    module._poe_placement = (name, device_key(device))
    return module


def needs_reload(module: torch.nn.Module, name: PlacementName) -> bool:
    """Whether placing ``module`` as ``name`` changes its fp8 storage (a cast that cannot be
    undone in place: the module must be loaded again from disk)."""
    previous = getattr(module, "_poe_placement", None)
    return previous is not None and previous[0].startswith(FP8_PREFIX) != name.startswith(FP8_PREFIX)


def placement_of(module: torch.nn.Module) -> str | None:
    """The placement name applied to ``module`` by :func:`apply_placement`, or None."""
    previous = getattr(module, "_poe_placement", None)
    return None if previous is None else previous[0]


def _apply_group_offloading(module: torch.nn.Module, name: str, device: str) -> None:
    from diffusers.hooks import apply_group_offloading

    module.to("cpu")
    on_cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    if on_cuda and not pinned_bytes(module):
        try:
            pin_offload_groups(module, register=True, include_rest=name != "group_offload")
        except RuntimeError as error:  # e.g. the OS limit on locked memory: stream from pageable memory, slower
            warnings.warn(f"streaming {type(module).__name__} from pageable host memory: {error}", RuntimeWarning, stacklevel=2)
    # With a stream the hooks offload by pointing each tensor back at its host copy (the packed,
    # registered buffers), never a new pageable copy; low_cpu_mem_usage: they keep those
    # tensors and pin per transfer only what is not pinned yet, never a second pinned copy.
    levels = {"offload_type": "block_level", "num_blocks_per_group": 1} if name == "group_offload" else {"offload_type": "leaf_level"}
    apply_group_offloading(module, onload_device=torch.device(device), use_stream=on_cuda, low_cpu_mem_usage=True, **levels)


class RegisteredHostBuffer:
    """One contiguous host buffer page-locked with ``cudaHostRegister`` for as long as this
    object lives (or until :meth:`release`), so the memory is never freed while registered."""

    def __init__(self, buffer: torch.Tensor) -> None:
        self.buffer, self.registered = buffer, False
        status = torch.cuda.cudart().cudaHostRegister(buffer.data_ptr(), buffer.nbytes, 0)
        if int(status) != 0:
            raise RuntimeError(f"cudaHostRegister of {buffer.nbytes} bytes failed with CUDA error {int(status)}")
        self.registered = True

    def release(self) -> None:
        if self.registered:
            torch.cuda.cudart().cudaHostUnregister(self.buffer.data_ptr())
            self.registered = False

    def __del__(self) -> None:
        self.release()


def offload_groups(module: torch.nn.Module, *, include_rest: bool) -> list[list[torch.Tensor]]:
    """The tensors of each block-level offload group: one list per child of the module's
    top-level ``ModuleList``s (what ``apply_group_offloading(block_level, 1 block per
    group)`` streams), then, with ``include_rest``, one of every other parameter and buffer.
    Shared tensors are listed once."""
    seen: set[int] = set()

    def unique(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        kept = [tensor for tensor in tensors if id(tensor) not in seen]
        seen.update(id(tensor) for tensor in kept)
        return kept

    blocks = [block for child in module.children() if isinstance(child, torch.nn.ModuleList) for block in child]
    groups = [unique([*block.parameters(), *block.buffers()]) for block in blocks]
    rest = [unique([*module.parameters(), *module.buffers()])] if include_rest else []
    return [group for group in [*groups, *rest] if group]


def pack_contiguous(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Move the CPU ``tensors`` into one new contiguous byte buffer (each at an offset
    aligned to its element size) and make each tensor a view of it; returns the buffer,
    whose size is the tensors' bytes plus at most a few alignment bytes."""
    offsets, size = [], 0
    for tensor in tensors:
        size += -size % tensor.element_size()
        offsets.append(size)
        size += tensor.numel() * tensor.element_size()
    buffer = torch.empty(size, dtype=torch.uint8)
    for tensor, offset in zip(tensors, offsets):
        view = buffer[offset : offset + tensor.numel() * tensor.element_size()].view(tensor.dtype).view(tensor.shape)
        view.copy_(tensor.data)
        tensor.data = view
    return buffer


def pin_offload_groups(module: torch.nn.Module, *, register: bool, include_rest: bool) -> int:
    """Pack ``module``'s CPU tensors into one contiguous buffer per offload group
    (:func:`offload_groups`, :func:`pack_contiguous`), registered with CUDA when ``register``
    (on a CUDA machine); returns the packed bytes, i.e. what is page-locked. The module
    keeps the buffers (:func:`unpin` releases them). ``include_rest``: also the tensors
    outside the blocks; diffusers streams them under leaf offload, but under block-level
    offload moves them synchronously and offloads them to new pageable memory, so packing
    them there would leave a locked copy nothing reads."""
    groups = [[tensor for tensor in group if tensor.device.type == "cpu"] for group in offload_groups(module, include_rest=include_rest)]
    buffers = [pack_contiguous(group) for group in groups if group]
    module._poe_host_buffers = [RegisteredHostBuffer(buffer) for buffer in buffers] if register else buffers
    return sum(buffer.nbytes for buffer in buffers)


def pinned_bytes(module: torch.nn.Module) -> int:
    """Host bytes :func:`pin_offload_groups` packed for ``module`` (0 when none)."""
    return sum((held.buffer if isinstance(held, RegisteredHostBuffer) else held).nbytes for held in getattr(module, "_poe_host_buffers", ()))


def unpin(module: torch.nn.Module) -> None:
    """Unregister and drop ``module``'s packed host buffers (its tensors keep their memory
    until the module goes, but it is no longer page-locked)."""
    for held in module.__dict__.pop("_poe_host_buffers", ()):
        if isinstance(held, RegisteredHostBuffer):
            held.release()


def _remove_group_offloading(module: torch.nn.Module) -> None:
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.group_offloading import _GROUP_OFFLOADING, _LAYER_EXECUTION_TRACKER, _LAZY_PREFETCH_GROUP_OFFLOADING

    registry = HookRegistry.check_if_exists_or_initialize(module)
    for hook in (_GROUP_OFFLOADING, _LAYER_EXECUTION_TRACKER, _LAZY_PREFETCH_GROUP_OFFLOADING):
        registry.remove_hook(hook, recurse=True)
    module.to("cpu")


def parameter_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


# ---------------------------------------------------------------------------------------
# Offload presets of the task parameters (``offload``), shared by every family


OFFLOAD_PRESETS: tuple[str, ...] = ("auto", "none", "group", "sequential")
_PRESET_PLACEMENT: dict[str, PlacementName] = {"none": "resident", "group": "group_offload", "sequential": "leaf_offload"}


def placement_for_offload(offload: str, fp8_storage: bool = False) -> PlacementName:
    """The placement an explicit ``offload`` preset names: ``none`` -> ``resident``,
    ``group`` -> ``group_offload``, ``sequential`` -> ``leaf_offload``, each ``fp8_``
    with ``fp8_storage``. There is no whole-model offload: moving a model at every
    evaluation of alternating experts costs more than the evaluation (issue 9)."""
    if offload not in _PRESET_PLACEMENT:
        raise ValueError(f"offload: {offload!r} names no placement; choose one of auto, none, group, sequential")
    return (FP8_PREFIX if fp8_storage else "") + _PRESET_PLACEMENT[offload]

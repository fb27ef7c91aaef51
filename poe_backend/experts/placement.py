"""Putting loaded modules on a device according to a per-role placement decision.

A decision is one of the memory planner's names (:data:`PLACEMENT_NAMES`):

* ``resident`` — the whole module on the device.
* ``fp8_resident`` — on the device, weights stored in float8_e4m3fn and cast per layer to the
  compute dtype (diffusers ``enable_layerwise_casting``; FLUX 12B: ~24 -> ~12 GB).
* ``group_offload`` — diffusers ``apply_group_offloading(block_level, 1 block per group)``:
  one transformer block at a time on the device, the next streamed in while one computes.
* ``leaf_offload`` — ``apply_group_offloading(leaf_level)``: smallest memory, slowest.

Host memory (issue 9, finding 3): with ``use_stream=True`` diffusers 0.42.1 keeps, per group,
``param.data.cpu().pin_memory()`` unless ``low_cpu_mem_usage`` — for parameters already on
the CPU that is a *second*, pinned, full host copy of the model. :func:`apply_placement`
instead pins the module's own parameters in place first (``pin_memory()`` of a pinned tensor
returns the tensor itself), so the hooks reference the same storage: one host copy, and
transfers stay asynchronous from pinned memory.

Hooks are applied once per module: a module remembers its placement, applying the same one
again does nothing, and a different one removes the group-offload hooks before applying the
new one. Switching fp8 storage cannot be undone in place (the weights were cast); the model
cache reloads the module instead (:class:`PlacementChangeNeedsReload`).

Whole-model moves per evaluation are never planned: :func:`auto_plan` chooses between the
decisions above only (issue 9, finding 2: two alternating 22 GiB FLUX transformers swapped
over PCIe cost 10-16 s per evaluation against ~1.4 s of compute).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch

PlacementName = Literal["resident", "fp8_resident", "group_offload", "leaf_offload"]
PLACEMENT_NAMES: tuple[str, ...] = ("resident", "fp8_resident", "group_offload", "leaf_offload")
#: Fraction of the budget that weights + activations may fill (allocator fragmentation, CUDA context).
HEADROOM = 0.9


class PlacementChangeNeedsReload(RuntimeError):
    """The module was placed with a different fp8 storage; reload it from disk first."""


@dataclass(frozen=True)
class Budget:
    """Memory a job may use, in bytes: free device memory and free host RAM."""

    device_bytes: int
    host_bytes: int

    @classmethod
    def detect(cls, device: str) -> "Budget | None":
        """Free VRAM of a CUDA ``device`` and available host RAM; None off CUDA (everything
        is resident in host memory there, nothing to plan)."""
        if not str(device).startswith("cuda") or not torch.cuda.is_available():
            return None
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return cls(device_bytes=int(free), host_bytes=_available_host_bytes())


def _available_host_bytes() -> int:
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


@dataclass(frozen=True)
class PlacementPlan:
    """Per-role placement decisions of one job (the memory planner's ``Plan`` has the same
    ``placements`` mapping and ``to_json``), with the figures the choice was made from."""

    placements: Mapping[str, PlacementName]
    weight_bytes: Mapping[str, int]
    activation_bytes: int
    budget: Budget | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "placements": dict(self.placements),
            "weight_bytes": dict(self.weight_bytes),
            "activation_bytes": self.activation_bytes,
            "budget": None if self.budget is None else {"device_bytes": self.budget.device_bytes, "host_bytes": self.budget.host_bytes},
            "reason": self.reason,
        }


def auto_plan(weight_bytes: Mapping[str, int], activation_bytes: int, budget: Budget | None, *, allow_fp8: bool = False) -> PlacementPlan:
    """Choose one placement for every role in ``weight_bytes`` (bf16 bytes on disk).

    No budget (CPU): all ``resident``. Otherwise, with ``HEADROOM`` of the device budget:
    all ``resident`` when every model plus ``activation_bytes`` fits; else, when
    ``allow_fp8``, all ``fp8_resident`` when half the weights fit; else every role
    ``group_offload`` (one block per model on the device, never a whole-model move per
    evaluation, which alternating experts would pay at every call). Offloaded weights live
    in host RAM: when they do not fit ``HEADROOM`` of it, raises MemoryError before anything
    loads (rather than the OS killing the process half-way)."""
    total = sum(weight_bytes.values())
    roles = list(weight_bytes)

    def every(name: PlacementName, reason: str) -> PlacementPlan:
        return PlacementPlan({role: name for role in roles}, dict(weight_bytes), activation_bytes, budget, reason)

    if budget is None:
        return every("resident", "no CUDA device: models stay in host memory")
    usable = HEADROOM * budget.device_bytes
    if total + activation_bytes <= usable:
        return every("resident", f"weights {total} B + activations {activation_bytes} B fit {usable:.0f} B")
    if allow_fp8 and total // 2 + activation_bytes <= usable:
        return every("fp8_resident", f"bf16 weights {total} B do not fit {usable:.0f} B; fp8 storage {total // 2} B does")
    if total > HEADROOM * budget.host_bytes:
        raise MemoryError(
            f"offloading needs the weights ({total / 2**30:.1f} GiB) in host RAM, but only {budget.host_bytes / 2**30:.1f} GiB is available "
            f"and the device has {budget.device_bytes / 2**30:.1f} GiB free: free host RAM, use a larger card, or the preview preset"
        )
    return every("group_offload", f"weights {total} B + activations {activation_bytes} B exceed {usable:.0f} B: stream blocks")


def apply_placement(module: torch.nn.Module, name: PlacementName, device: str) -> torch.nn.Module:
    """Place ``module`` (a diffusers model for the fp8 and offload names) once; returns it.

    The same ``(name, device)`` again is a no-op; another one removes this module's
    group-offload hooks first. Raises :class:`PlacementChangeNeedsReload` when the fp8
    storage would change."""
    if name not in PLACEMENT_NAMES:
        raise ValueError(f"placement: unknown {name!r}; choose one of {', '.join(PLACEMENT_NAMES)}")
    previous = getattr(module, "_poe_placement", None)
    if previous == (name, str(device)):
        return module
    if previous is not None and (previous[0] == "fp8_resident") != (name == "fp8_resident"):
        raise PlacementChangeNeedsReload(f"module placed as {previous[0]}, now {name}: reload it")
    if previous is not None and previous[0] in ("group_offload", "leaf_offload"):
        _remove_group_offloading(module)
    if name == "fp8_resident" and previous is None:
        module.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=module.dtype)
    if name in ("resident", "fp8_resident"):
        module.to(device)
    else:
        _apply_group_offloading(module, name, device)
    module._poe_placement = (name, str(device))
    return module


def placement_of(module: torch.nn.Module) -> str | None:
    """The placement name applied to ``module`` by :func:`apply_placement`, or None."""
    previous = getattr(module, "_poe_placement", None)
    return None if previous is None else previous[0]


def _apply_group_offloading(module: torch.nn.Module, name: PlacementName, device: str) -> None:
    from diffusers.hooks import apply_group_offloading

    module.to("cpu")
    on_cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    if on_cuda:
        pin_in_place(module)
    if name == "group_offload":
        apply_group_offloading(module, onload_device=torch.device(device), offload_type="block_level", num_blocks_per_group=1, use_stream=on_cuda)
    else:
        apply_group_offloading(module, onload_device=torch.device(device), offload_type="leaf_level")


def pin_in_place(module: torch.nn.Module) -> None:
    """Replace every CPU parameter's and buffer's storage by a pinned copy (one at a time,
    so the transient extra host memory is one tensor, not a model)."""
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.device.type == "cpu" and not tensor.is_pinned():
            tensor.data = tensor.data.pin_memory()


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


OFFLOAD_PRESETS: tuple[str, ...] = ("auto", "none", "model", "group", "sequential")
_PRESET_PLACEMENT: dict[str, PlacementName] = {"none": "resident", "group": "group_offload", "sequential": "leaf_offload"}


def placement_for_offload(offload: str, fp8_storage: bool = False) -> PlacementName:
    """The placement an explicit ``offload`` preset names: ``none`` -> ``resident`` (or
    ``fp8_resident`` with ``fp8_storage``), ``group`` -> ``group_offload``, ``sequential``
    -> ``leaf_offload``. (``model`` has no per-role placement: see :class:`Placement`.)
    fp8 storage with group offload is not a planner placement, so it is refused."""
    if offload == "none":
        return "fp8_resident" if fp8_storage else "resident"
    if fp8_storage:
        raise ValueError(f"fp8_storage: combines with offload 'none' or 'auto', not {offload!r}")
    if offload not in _PRESET_PLACEMENT:
        raise ValueError(f"offload: {offload!r} names no placement; choose one of auto, none, group, sequential")
    return _PRESET_PLACEMENT[offload]


def choose_offload(device: str, resident_bytes: int, largest_bytes: int, activation_bytes: int = 0, *, alternating: bool = True) -> str:
    """Resolve ``auto`` from free VRAM: ``none`` when everything fits (with headroom);
    ``model`` only for a single, non-alternating model whose weights plus activations fit
    (one move per job, not per evaluation); else ``group``. Always ``none`` off CUDA."""
    budget = Budget.detect(device)
    if budget is None:
        return "none"
    usable = HEADROOM * budget.device_bytes
    if resident_bytes + activation_bytes <= usable:
        return "none"
    if not alternating and largest_bytes + activation_bytes <= usable:
        return "model"
    return "group"


class Placement:
    """An offload preset applied to the big models of one product (the ``offload`` task
    parameter): ``none`` -> ``resident``, ``group`` -> ``group_offload``, ``sequential`` ->
    ``leaf_offload`` through :func:`apply_placement` (fp8 storage with ``none`` only),
    and ``model``: models stay on the CPU and :meth:`activate` moves the one about to run to
    the device (explicit choice only; ``auto`` never picks it for several experts).
    """

    def __init__(self, preset: str, device: str, *, fp8_storage: bool = False) -> None:
        if preset not in OFFLOAD_PRESETS or preset == "auto":
            raise ValueError(f"offload: unknown preset {preset!r}; choose one of none, model, group, sequential")
        self.preset, self.device, self.fp8_storage = preset, device, fp8_storage
        self._active: Any = None

    @classmethod
    def for_sizes(cls, preset: str, device: str, sizes: list[int], *, activation_bytes: int = 0, fp8_storage: bool = False) -> "Placement":
        """Resolve ``auto`` from the models' sizes in bytes (halved under ``fp8_storage``);
        several sizes are alternating experts, so never ``model``."""
        if preset == "auto":
            sizes = [size // 2 if fp8_storage else size for size in sizes] or [0]
            preset = choose_offload(device, sum(sizes), max(sizes), activation_bytes, alternating=len(sizes) > 1)
        return cls(preset, device, fp8_storage=fp8_storage)

    @classmethod
    def for_modules(cls, preset: str, device: str, modules: list[Any], *, activation_bytes: int = 0, fp8_storage: bool = False) -> "Placement":
        """:meth:`for_sizes` with the sizes of loaded modules."""
        return cls.for_sizes(preset, device, [parameter_bytes(module) for module in modules], activation_bytes=activation_bytes, fp8_storage=fp8_storage)

    def place(self, module: Any) -> Any:
        """Prepare ``module`` (once per module, whatever the Placement instance); returns it."""
        if self.preset == "model":
            module.to("cpu")
            module._poe_placement = ("model_offload", str(self.device))
            return module
        return apply_placement(module, placement_for_offload(self.preset, self.fp8_storage), self.device)

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

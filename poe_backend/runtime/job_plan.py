"""One planning call for every runtime (FLUX, Wan, FramePack): from the installed transformers'
exact sizes and a job's activation and decode bytes to the placements to apply and the decode
settings, through :func:`poe_backend.runtime.planner.plan` (the one place that decides).

* ``offload="auto"`` on CUDA: :func:`planner.plan` chooses placements and decode.
* an explicit ``offload`` (``none``, ``group``, ``sequential``) names the placement; on CUDA
  the decode settings still come from the planner's rule 7 (:func:`planner.decode_plan`).
* off CUDA (no device budget): everything stays in host memory and decodes untiled, one
  video at a time, beside the models.

The budget counts as free what the model cache may evict for this job (models the job has not
used yet, which are evicted right after planning) and the device memory the same roles
already hold from an earlier job, so a repeated job keeps them resident instead of
offloading them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import torch
from torch import Tensor

from poe_backend.runtime import planner
from poe_backend.runtime.planner import Budget, DecodePlan, RolePlan
from poe_backend.runtime.cache import MODEL_CACHE
from poe_backend.runtime.placement import FP8_PREFIX, PlacementPlan, placement_for_offload, placement_name

#: Decode off CUDA: untiled, one video at a time, models kept.
HOST_DECODE = DecodePlan(tiled=False, per_image=True, free_transformers=False)


@dataclass(frozen=True)
class JobPlan:
    """What a video runtime applies: ``placement`` (role -> placement name, the planner's
    :class:`~poe_backend.runtime.planner.Plan` when ``auto`` decided) and ``decode``."""

    placement: PlacementPlan
    decode: DecodePlan

    def to_json(self) -> dict[str, Any]:
        return {**self.placement.to_json(), "decode": asdict(self.decode)}


def job_budget(budget: Budget | None | str, device: str) -> Budget | None:
    """What a job plans against: ``budget`` as given, or the device's free memory read now
    when it is ``"detect"`` (at planning time, after the text encoders are released)."""
    return planner.device_budget(device) if budget == "detect" else budget


def plan_transformers(roles: list[str], preset: str, device: str, *, offload: str, fp8_storage: bool, activation_bytes: int,
                      decode_bytes: int, tiled_decode_bytes: int, budget: Budget | None, alternating: bool) -> JobPlan:
    """Plan the transformers ``roles`` of ``preset`` for one job on ``device`` (see the module
    docstring). Raises :class:`planner.PlanError` (a MemoryError) when nothing fits."""
    sizes = [planner.installed_size(role, preset) for role in roles]
    weight_bytes = {size.role: size.weight_bytes for size in sizes}
    if budget is None:
        placements = {role: "resident" for role in roles} if offload == "auto" else {role: placement_for_offload(offload, fp8_storage) for role in roles}
        return JobPlan(PlacementPlan(placements, weight_bytes, f"no CUDA device: models stay in host memory (offload={offload!r})"), HOST_DECODE)
    budget = replace(budget, vram_free_bytes=budget.vram_free_bytes + MODEL_CACHE.reclaimable_bytes(device, keep=roles))
    MODEL_CACHE.evict_unused(device, keep=roles)  # the plan counted their memory as free: make it so
    if offload == "auto":
        planned = planner.plan(sizes, activation_bytes, decode_bytes, budget, alternating=alternating, allow_fp8=fp8_storage, tiled_decode_bytes=tiled_decode_bytes)
        placements = {role: placement_name(role_plan) for role, role_plan in planned.placements.items()}
        return JobPlan(PlacementPlan(placements, weight_bytes, "; ".join(planned.reasons), planned), planned.decode)
    name = placement_for_offload(offload, fp8_storage)
    role_plans = {role: RolePlan(name.removeprefix(FP8_PREFIX), name.startswith(FP8_PREFIX)) for role in roles}
    decode = planner.decode_plan(sizes, role_plans, decode_bytes, budget, tiled_decode_bytes=tiled_decode_bytes)
    return JobPlan(PlacementPlan({role: name for role in roles}, weight_bytes, f"offload={offload!r} requested"), decode)


def describe(plan: JobPlan | None, device: str, dtype: Any) -> dict[str, Any]:
    """The plan as JSON for ``result.json``'s ``placement``."""
    return json.loads(json.dumps({"device": str(device), "dtype": str(dtype), **({} if plan is None else plan.to_json())}, default=str))


def set_vae_tiling(vae: Any, tiled: bool) -> None:
    """Turn a diffusers video VAE's tiling on or off (encode and decode)."""
    vae.enable_tiling() if tiled else vae.disable_tiling()


@torch.no_grad()
def decode_videos(vae: Any, latents: Tensor, job_plan: JobPlan | None, free_transformers: Callable[[], None], vae_input: Callable[[Tensor], Tensor]) -> Tensor:
    """Latents ``(B, ...)`` -> videos ``(B, F, 3, H, W)`` in [0, 1] (float32, CPU), one at a
    time, with the plan's decode settings: ``free_transformers()`` first and the VAE tiled
    when the plan says so (no plan: as the VAE is). ``vae_input(latent)`` turns one latent
    ``(1, ...)`` into the VAE's own input (its scaling, device and dtype)."""
    if job_plan is not None:
        if job_plan.decode.free_transformers:
            free_transformers()
        set_vae_tiling(vae, job_plan.decode.tiled)
    videos = []
    for latent in latents.split(1):
        video = vae.decode(vae_input(latent), return_dict=False)[0].float().clamp(-1, 1)
        videos.append(((video[0].permute(1, 0, 2, 3) + 1) / 2).cpu())
    return torch.stack(videos)

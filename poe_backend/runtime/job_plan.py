"""One planning call for every runtime (FLUX, Wan, FramePack): from the installed transformers'
exact sizes and a job's activation and decode bytes to the placements to apply and the decode
settings, through :func:`poe_backend.runtime.planner.plan` (the one place that decides).

* ``offload="auto"`` on CUDA: :func:`planner.plan` chooses placements, the micro-batch and
  the decode.
* an explicit ``offload`` (``none``, ``group``, ``sequential``) names the placement; on CUDA
  the decode settings and the micro-batch still come from the planner's rules 7 and 9
  (:func:`planner.decode_plan`, :func:`planner.micro_batch_beside`). A conditioned expert's
  model cannot be streamed (rule 8): naming a streamed placement for one is a ValueError.
* off CUDA (no device budget): everything stays in host memory and decodes untiled, one
  video at a time, beside the models; every particle in one forward unless ``max_batch``.

A task's ``max_batch`` fixes the particles per forward everywhere; without it the planner
chooses them (rule 9) and :attr:`JobPlan.micro_batch` is what the runtimes give their experts.

The budget counts as free what the model cache may evict for this job (models the job has not
used yet, which are evicted right after planning) and the device memory the same roles
already hold from an earlier job, so a repeated job keeps them resident instead of
offloading them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Collection

import torch
from torch import Tensor

from poe_backend.runtime import planner
from poe_backend.runtime.planner import Budget, DecodePlan, RolePlan
from poe_backend.runtime.cache import MODEL_CACHE
from poe_backend.runtime.placement import FP8_PREFIX, PlacementPlan, placement_for_offload, placement_name
from poe_backend.sampling.run import checkpoint

#: Decode off CUDA: untiled, one video at a time, models kept.
HOST_DECODE = DecodePlan(tiled=False, per_image=True, free_transformers=False)


@dataclass(frozen=True)
class JobPlan:
    """What a runtime applies: ``placement`` (role -> placement name, the planner's
    :class:`~poe_backend.runtime.planner.Plan` when ``auto`` decided), ``decode``, and
    ``micro_batch`` of the job's ``particles`` per expert forward, each costing
    ``particle_bytes`` of activations (one particle's, as planned)."""

    placement: PlacementPlan
    decode: DecodePlan
    micro_batch: int
    particles: int
    particle_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {**self.placement.to_json(), "decode": asdict(self.decode), "micro_batch": self.micro_batch, "particles": self.particles}


def job_budget(budget: Budget | None | str, device: str) -> Budget | None:
    """What a job plans against: ``budget`` as given, or the device's free memory read now
    when it is ``"detect"`` (at planning time, after the text encoders are released)."""
    return planner.device_budget(device) if budget == "detect" else budget


def plan_transformers(roles: list[str], preset: str, device: str, *, offload: str, fp8_storage: bool, particle_bytes: int, decode_bytes: int,
                      tiled_decode_bytes: int, budget: Budget | None, alternating: bool, particles: int = 1, max_batch: int | None = None,
                      conditioned: Collection[str] = ()) -> JobPlan:
    """Plan the transformers ``roles`` of ``preset`` for one job of ``particles`` on
    ``device`` (see the module docstring): ``particle_bytes`` is one particle's activations
    of the job's largest pass, ``conditioned`` the roles conditioned experts back-propagate
    through. Raises :class:`planner.PlanError` (a MemoryError) when nothing fits."""
    sizes = [planner.installed_size(role, preset) for role in roles]
    weight_bytes = {size.role: size.weight_bytes for size in sizes}
    fixed = min(max_batch, particles) if max_batch else None
    if offload != "auto" and set(conditioned) & set(roles) and placement_for_offload(offload, fp8_storage).removeprefix(FP8_PREFIX) != "resident":
        raise ValueError(f"offload={offload!r} streams {', '.join(sorted(set(conditioned) & set(roles)))}, whose conditioned expert (cond_weight > 0) back-propagates through it: "
                         "streamed weights do not support that; use offload='auto' or 'none', or cond_weight=0")
    if budget is None:
        placements = {role: "resident" for role in roles} if offload == "auto" else {role: placement_for_offload(offload, fp8_storage) for role in roles}
        placement = PlacementPlan(placements, weight_bytes, f"no CUDA device: models stay in host memory (offload={offload!r})")
        return JobPlan(placement, HOST_DECODE, fixed or particles, particles, particle_bytes)
    budget = replace(budget, vram_free_bytes=budget.vram_free_bytes + MODEL_CACHE.reclaimable_bytes(device, keep=roles))
    MODEL_CACHE.evict_unused(device, keep=roles)  # the plan counted their memory as free: make it so
    if offload == "auto":
        planned = planner.plan(sizes, particle_bytes, decode_bytes, budget, alternating=alternating, allow_fp8=fp8_storage, tiled_decode_bytes=tiled_decode_bytes,
                               particles=particles, max_batch=max_batch, resident_roles=conditioned)
        placements = {role: placement_name(role_plan) for role, role_plan in planned.placements.items()}
        return JobPlan(PlacementPlan(placements, weight_bytes, "; ".join(planned.reasons), planned), planned.decode, planned.micro_batch, particles, particle_bytes)
    name = placement_for_offload(offload, fp8_storage)
    role_plans = {role: RolePlan(name.removeprefix(FP8_PREFIX), name.startswith(FP8_PREFIX)) for role in roles}
    decode = planner.decode_plan(sizes, role_plans, decode_bytes, budget, tiled_decode_bytes=tiled_decode_bytes)
    batch = fixed or planner.micro_batch_beside(sizes, role_plans, particle_bytes, budget, particles)
    return JobPlan(PlacementPlan({role: name for role in roles}, weight_bytes, f"offload={offload!r} requested"), decode, batch, particles, particle_bytes)


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
        checkpoint()
        video = vae.decode(vae_input(latent), return_dict=False)[0].float().clamp(-1, 1)
        videos.append(((video[0].permute(1, 0, 2, 3) + 1) / 2).cpu())
    return torch.stack(videos)

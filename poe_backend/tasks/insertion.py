"""Object insertion: plate + depth (with the object) + object mask + prompt -> image.

Product (paper, "object insertion"): FLUX.1 Depth [dev] on the normalised disparity of the
depth render × FLUX.1 Fill [dev] on the plate with the object region masked (white =
generate), both on one packed FLUX latent, sampled by the score-only Feynman-Kac path by
default. With ``blend`` the plate is pasted back outside the mask at the end, so pixels
outside the object mask equal the plate exactly (the mask is feathered inwards only).

Baselines (``method``): ``depth`` or ``fill`` alone; ``rf_solver``: RF-Solver inversion of
the bundle's RGB render (the naive composite; the plate if there is none) with FLUX.1 [dev]
and ``rf_source_prompt``, then editing with the prompt, sharing attention V for the first
``rf_inject`` steps (see :mod:`poe_backend.families.flux.rf_solver`). Single-expert baselines use the summed-velocity ODE
(each model's own sampler) unless ``sampler`` is set explicitly.

Bundle: passes ``plate``, ``depth`` (first frame), ``mask.<object>`` (first frame; the union
of all objects unless ``object`` names one); prompt: the bundle's, else the objects' prompts.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageFilter
from pydantic import Field

from poe_backend.bundle import Bundle, BundleError
from poe_backend.sampling import Factor, ProductOfExperts
from poe_backend.sampling.experts import Conditioning
from poe_backend.sampling.resampling import chosen_particle
from poe_backend.tasks import images
from poe_backend.tasks.base import JobCost, Task, TaskContext, TaskResult, flux_tokens, planned_sampler_cost, seed_for


class InsertionParams(images.ImageParams):
    """Defaults from measurements (issue 10), not from the analytic toys alone; the figures
    are in README.md (The sampling math, Task defaults and why, Measurements):

    * ``particles=1``: in the insertion miniature (``benchmarks/digits_insertion.py``: a
      layout expert, the class and the coarse layout of the scene with the object, × an
      inpainter on 8×8 digits, at these settings) P = 1, 2 and 4 with the particle drawn by
      weight scored the same within noise on known-pixel RMSE, masked-pixel RMSE against
      the object and class accuracy.
      The Feynman-Kac weights of a Σλ = 2 product are dominated by the
      ``½Σλ(Σλ-1)‖s̄‖²`` transport term, which carries no information about the modes (on
      the analytic 2-expert product ESS/P falls below 0.5 at nearly every level); in the
      miniature their spread is already several nats at 64 dimensions and ESS/P stays near
      1/P from the first level, and with a spread growing like √D a 1024² latent (262,144 values) would reach hundreds of nats
      (``benchmarks/learned_experts.py --part spread``), so resampling and the final choice
      are near-greedy picks on noise. More particles only give more alternatives
      (``save_particles``), at P times the cost.
    * ``langevin_steps=1``: 0 / 1 / 2 corrector steps moved the miniature's RMSEs by less
      than their noise; on the 32-D learned product (``benchmarks/learned_experts.py --part
      task --task-langevin-steps N``) each step brought the draw closer to the exact
      product, at a growing cost (planned NFE at 28 levels, both experts: 70 / 122 / 174 for
      0 / 1 / 2 steps; the exponential transport 54 / 106 / 158). One step is the
      compromise: with P = 1 the default run costs 122 FLUX forwards, inside the run-time
      target that the earlier default (P = 2, 2 steps: 174 forwards of two particles)
      missed (an estimate, no GPU measurement yet). Transport (Euler, not the cheaper
      exponential step, whose draws are too narrow):
      :func:`poe_backend.tasks.base.transport_field`.
    * ``sampler="fkc"``: on the analytic products it is close to the two-sample floor where
      annealed Langevin is well above it on all but one (no transport weights;
      ``benchmarks/sampler_accuracy.py``), and in the miniature it keeps the known pixels
      better.
    * ``levels=28``: FLUX's own step count; 100 levels changed the miniature by less than
      its noise.
    * ``cond_weight=0`` (conditional experts off): in the miniature
      (``benchmarks/digits_insertion.py --part conditioning``, paired against the plain
      product) no reading of who conditions whom and no weight improved known-pixel RMSE,
      masked RMSE or class accuracy beyond noise; Depth-parent / Fill-child over the mask
      (:func:`conditioning`) is flat up to 0.1, costs accuracy at 0.3 and breaks the draw at
      1, and the conditioned child costs three times its forwards. The term moves the
      child towards its parent by ``w·gain(t)`` and draws break once that passes 1-2.
    """

    method: Literal["product", "depth", "fill", "rf_solver"] = "product"
    particles: int = Field(1, ge=1, le=256, description="independent alternatives (weights of a Σλ=2 product carry no quality signal: see the class docstring)")
    langevin_steps: int = Field(1, ge=0, le=50)
    object: str | None = Field(None, description="object whose mask is filled; None: all objects")
    guidance_depth: float = Field(10.0, ge=0.0, le=100.0)
    guidance_fill: float = Field(30.0, ge=0.0, le=100.0)
    depth_weight: float = Field(1.0, gt=0.0, le=8.0)
    fill_weight: float = Field(1.0, gt=0.0, le=8.0)
    blend: bool = True
    feather_px: int = Field(0, ge=0, le=64, description="inward feather of the blend mask")
    rf_source_prompt: str = ""
    rf_guidance: float = Field(2.0, ge=0.0, le=100.0)
    rf_inject: int = Field(2, ge=0, le=50, description="RF-Solver V-sharing steps (0: off)")
    rf_share_blocks: int = Field(18, ge=0, le=38, description="last single-stream blocks whose V is shared")
    cond_weight: float = Field(0.0, ge=0.0, le=10.0, description="conditional experts (product only): Fill, the child, aligned to Depth, its parent, over the object's tokens (0: off)")


class InsertionTask(Task):
    name = "insertion"
    Params = InsertionParams
    kind = "image"

    def model_roles(self, context: TaskContext) -> list[str]:
        from poe_backend.families.flux.runtime import FluxRuntime

        return FluxRuntime.roles(transformer_kinds(context.params.effective().method))

    def run(self, context: TaskContext) -> TaskResult:
        from poe_backend.models import lookup
        from poe_backend.models import specs
        from poe_backend.families.flux.runtime import FluxRuntime

        params = with_own_sampler(context.params.effective())
        bundle, timer = context.bundle, images.Timer()
        if bundle.task != self.name:
            raise BundleError("task", f"this bundle is for '{bundle.task}', not '{self.name}'")
        height, width = images.resolution(bundle, params.max_side)
        plate, depth, mask = read_inputs(bundle, params, (height, width))
        prompt = insertion_prompt(bundle)
        roles = FluxRuntime.roles(transformer_kinds(params.method))
        lookup.check_available(roles, context.models)
        seed = seed_for(context)

        runtime = FluxRuntime(height, width, preset=context.models, device=context.device, max_sequence_length=params.max_sequence_length)
        prompts = [prompt, params.rf_source_prompt] if params.method == "rf_solver" else [prompt]
        embeddings = runtime.encode_prompts(prompts)
        timer.mark("load_and_encode")
        if params.method == "rf_solver":
            source = read_source(bundle, (height, width))
            particles, log_weights, stats = run_rf_solver(runtime, params, embeddings, source, context)
        else:
            particles, log_weights, stats = run_product(runtime, params, embeddings[0], plate, depth, mask, seed, context)
        timer.mark("sample")
        decoded = images.to_uint8(runtime.decode(particles))
        best = chosen_particle(log_weights, seed)
        blend_mask = feathered(mask, params.feather_px)
        final = blend(decoded[best], plate, blend_mask) if params.blend else decoded[best]
        outputs = images.write_outputs(context.out_dir, final, decoded if params.save_particles else None, log_weights)
        Image.fromarray(decoded[best]).save(context.out_dir / "raw.png")
        outputs["raw"] = context.out_dir / "raw.png"
        written, seen = images.write_expert_inputs(context.out_dir, expert_inputs(params, bundle, plate, depth, mask, (height, width)))
        outputs.update(written)
        timer.mark("decode_and_write")
        record = images.manifest(
            self.name,
            context,
            params,
            seed,
            prompt=prompt,
            resolution=[height, width],
            chosen_index=best,
            log_weights=log_weights.tolist(),
            sampler_stats=stats,
            placement=runtime.describe(),
            mask_pixels=int(mask.sum()),
            expert_inputs=seen,
            model_specs={role: specs.get_spec(role, context.models).describe() for role in roles},
            seconds=timer.seconds,
        )
        return TaskResult(kind="image", primary="image", outputs=outputs, manifest=record)

    def planned_cost(self, bundle: Bundle, params: InsertionParams) -> JobCost:
        """The product (or a single expert) at the run's resolution: FLUX's forwards (one
        per evaluation: [dev] models are guidance-distilled) over its levels, the conditioned
        Fill three; ``rf_solver`` is one particle, inverted and edited over ``levels - 1``
        steps each, RF-Solver's two forwards per step."""
        params = with_own_sampler(params.effective())
        height, width = images.resolution(bundle, params.max_side)
        tokens = flux_tokens(height, width)
        if params.method == "rf_solver":
            forwards = 2 * 2 * (params.levels - 1)
            return JobCost(particles=1, nfe=forwards, forwards=forwards, tokens=tokens, width=width, height=height, frames=1)
        kinds = transformer_kinds(params.method)
        weights = {"depth": params.depth_weight, "fill": params.fill_weight}
        nfe, forwards = planned_sampler_cost(params.sampler, images.levels_for(params, tokens), expert_passes=[1] * len(kinds), total_weight=sum(weights[kind] for kind in kinds),
                                             children=conditioned_children(params, kinds), langevin_steps=params.langevin_steps, transport=params.transport)
        return JobCost(particles=params.particles, nfe=nfe, forwards=forwards, tokens=tokens, width=width, height=height, frames=1)


def with_own_sampler(params: InsertionParams) -> InsertionParams:
    """The single-expert baselines (``depth``, ``fill``) run their model's own flow sampler
    (``summed_velocity``) unless the caller chose a sampler."""
    if params.method in ("depth", "fill") and "sampler" not in params.model_fields_set:
        return params.model_copy(update={"sampler": "summed_velocity"})
    return params


def transformer_kinds(method: str) -> list[str]:
    return {"product": ["depth", "fill"], "depth": ["depth"], "fill": ["fill"], "rf_solver": ["dev"]}[method]


def insertion_prompt(bundle) -> str:
    """The bundle's prompt, else the objects' prompts joined; BundleError when both are empty."""
    prompt = bundle.prompt.strip() or ", ".join(obj.prompt for obj in bundle.objects if obj.prompt)
    if not prompt:
        raise BundleError("prompt", "insertion needs a prompt (bundle prompt or an object prompt)")
    return prompt


def read_inputs(bundle, params: InsertionParams, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plate ``(H, W, 3)`` uint8, depth ``(H, W)`` float32 and the object mask ``(H, W)`` in
    {0, 1} (union of the chosen objects' masks), all on the first frame at ``size``."""
    frame = bundle.frames[0]
    plate = images.read_rgb(bundle.pass_path("plate"), size, "passes.plate")
    depth = images.read_depth(bundle.pass_path("depth", frame), size, "passes.depth")
    names = [obj.name for obj in bundle.objects]
    if params.object is not None and params.object not in names:
        raise ValueError(f"object: no object named {params.object!r} in the bundle (has {', '.join(names)})")
    chosen = [params.object] if params.object is not None else names
    masks = [images.read_mask(bundle.pass_path(f"mask.{name}", frame), size, f"passes.mask.{name}") for name in chosen]
    return plate, depth, np.maximum.reduce(masks)


def read_source(bundle, size: tuple[int, int]) -> np.ndarray:
    """RF-Solver's source image: the first frame's RGB render with the object in it,
    ``size`` (height, width), uint8. Every insertion bundle has the pass (the loader
    refuses one without it: ``bundle.TASK_PASSES``)."""
    return images.read_rgb(bundle.pass_path("rgb", bundle.frames[0]), size, "passes.rgb")


def run_product(runtime, params: InsertionParams, embedding, plate, depth, mask, seed: int, context: TaskContext):
    """Depth × Fill (or one of them) on the runtime's latent; returns particles, log-weights,
    sampler stats."""
    kinds = transformer_kinds(params.method)
    links = conditioning(params, kinds, mask, runtime.device)
    runtime.plan(kinds, offload=params.offload, fp8_storage=params.fp8_storage, particles=params.particles, max_batch=params.max_batch,
                 conditioned=[kinds[link.child] for link in links])
    factors = []
    if "depth" in kinds:
        expert = runtime.expert("depth", embedding, guidance=params.guidance_depth, condition=runtime.depth_condition(depth), max_batch=params.max_batch)
        factors.append(Factor(expert, params.depth_weight))
    if "fill" in kinds:
        expert = runtime.expert("fill", embedding, guidance=params.guidance_fill, condition=runtime.fill_condition(plate, mask), max_batch=params.max_batch)
        factors.append(Factor(expert, params.fill_weight))
    product = ProductOfExperts(factors, conditioning=links)
    generator, noise = images.start_noise(seed, params.particles, runtime.event_shape)
    levels = images.levels_for(params, runtime.num_tokens)
    result = images.run_sampler(params, product, noise.to(context.device), levels, generator, context)
    stats = {**result.stats(), "sampler": params.sampler, "levels": levels, "expert_calls": {f.expert.name: f.expert.calls for f in factors}}
    return result.particles, result.log_weights.float().cpu(), stats


def conditioning(params: InsertionParams, kinds: list[str], mask: np.ndarray, device: str) -> list[Conditioning]:
    """The paper's conditional experts for insertion, ``p_depth(x) · p_fill(x_obj | x)``:
    Depth is the parent (it holds the scene's exact geometry with the object in it, from
    the render), Fill the child over the object's tokens (the region it generates; outside
    it Fill is already conditioned on the plate). The term pulls Fill's velocity towards
    Depth's where the object goes, the controllability the paper's ablation measures.
    Empty when ``cond_weight`` is 0 or one expert runs alone."""
    return [Conditioning(child=child, parents=(0,), weight=params.cond_weight, region=token_region(mask).to(device)) for child in conditioned_children(params, kinds)]


def conditioned_children(params: InsertionParams, kinds: list[str]) -> list[int]:
    """The factors :func:`conditioning` conditions: Fill (factor 1) when ``cond_weight`` is
    not 0 and both experts run, else none."""
    return [1] if params.cond_weight != 0.0 and kinds == ["depth", "fill"] else []


def token_region(mask: np.ndarray) -> torch.Tensor:
    """A pixel mask ``(H, W)`` in [0, 1] -> FLUX's per-token share ``(N, 1)`` (each packed
    token covers 16×16 pixels, row-major as the packing orders them)."""
    from poe_backend.families.flux.runtime import TOKEN_PIXELS

    pooled = torch.nn.functional.avg_pool2d(torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None], TOKEN_PIXELS)
    return pooled.reshape(-1, 1)


def run_rf_solver(runtime, params: InsertionParams, embeddings, source: np.ndarray, context: TaskContext):
    """RF-Solver baseline: invert ``source`` (t 0 -> 1, source prompt, guidance 1), edit
    (t 1 -> 0, prompt, ``rf_guidance``). Deterministic: one particle, no seed."""
    from poe_backend.families.flux.rf_solver import ValueSharing, rf_solver
    from poe_backend.sampling.schedules import flux_shift_mu, shifted_levels

    runtime.plan(["dev"], offload=params.offload, fp8_storage=params.fp8_storage, particles=1)
    target, source_prompt = embeddings
    invert = runtime.expert("dev", source_prompt, guidance=1.0, name="inversion")
    edit = runtime.expert("dev", target, guidance=params.rf_guidance, name="edit")
    times = shifted_levels(params.levels, flux_shift_mu(runtime.num_tokens), t_max=1.0)
    steps = len(times) - 1
    x = runtime.encode_image(source).to(context.device)
    sharing = ValueSharing(invert.transformer, steps, inject=params.rf_inject, num_blocks=params.rf_share_blocks)
    try:
        noise, nfe = rf_solver(invert, x, times[::-1], callback=context.callback, should_stop=context.should_stop, num_levels=2 * steps, before_forward=sharing.inversion_hook)
        edited, more = rf_solver(
            edit, noise, times, callback=context.callback, should_stop=context.should_stop,
            nfe_offset=nfe, level_offset=steps, num_levels=2 * steps, before_forward=sharing.editing_hook,
        )
    finally:
        sharing.remove()
    stats = {"path": f"rf-solver inversion + edit (V shared in {sharing.inject} steps)", "nfe_per_particle": nfe + more, "levels": times}
    return edited, torch.zeros(1), stats


def expert_inputs(params: InsertionParams, bundle, plate: np.ndarray, depth: np.ndarray, mask: np.ndarray, size: tuple[int, int]) -> dict[str, dict[str, np.ndarray]]:
    """What each expert of ``params.method`` was given, as images at the run's resolution:
    Depth its normalised disparity (near = white), Fill the masked plate (the object's
    pixels grey, as ``image · (1 − mask)`` in [-1, 1] is) and the mask, RF-Solver's inversion
    the source render."""
    from poe_backend.families.flux.runtime import disparity_from_depth

    binary = (mask >= 0.5)[..., None]
    seen: dict[str, dict[str, np.ndarray]] = {}
    if "depth" in transformer_kinds(params.method):
        seen["depth"] = {"control": images.as_uint8(disparity_from_depth(depth))}
    if "fill" in transformer_kinds(params.method):
        seen["fill"] = {"masked_plate": np.where(binary, np.uint8(128), plate), "mask": images.as_uint8(mask)}
    if params.method == "rf_solver":
        seen["inversion"] = {"source": read_source(bundle, size)}
    return seen


def feathered(mask: np.ndarray, feather_px: int) -> np.ndarray:
    """The blend mask: ``mask`` itself, or ``mask · blur(mask)`` (Gaussian, radius
    ``feather_px``), which softens the edge inwards and stays 0 outside the mask."""
    if feather_px == 0:
        return mask
    blurred = np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(feather_px)), dtype=np.float32) / 255.0
    return mask * blurred


def blend(generated: np.ndarray, plate: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``plate·(1 - m) + generated·m`` in uint8; exactly the plate where ``m = 0``."""
    alpha = mask[..., None]
    mixed = plate.astype(np.float32) * (1.0 - alpha) + generated.astype(np.float32) * alpha
    result = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
    return np.where(alpha > 0, result, plate)

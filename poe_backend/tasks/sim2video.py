"""``sim2video``: first frame + depth video of the baked simulation + prompt -> video.

Product (paper, sim-to-video): Wan2.1 depth-to-video (VACE with the normalised-disparity
video as control) × Wan2.1 image-to-video (the first frame), both on the Wan latent
``(16, F', H/8, W/8)``, sampled with the score-only Feynman-Kac sampler by default.
``pairing`` picks the I2V expert: ``i2v_vace`` = Wan2.1-I2V-14B (the paper's), or
``shared_vace`` = the same VACE transformer with the first frame as control (half the
memory; the ``preview`` preset's only option, as there is no 1.3B I2V).
Conditional experts (``cond_weight`` > 0, the paper's final version): the depth expert is
the parent (it holds the simulation's exact geometry and timing, as Depth does in
insertion), the first-frame expert the child over the whole clip, its velocity aligned to
the depth expert's (one vector–Jacobian product through both CFG passes per evaluation).

Baselines (``mode``): ``i2v`` (the I2V expert alone), ``depth`` (depth-to-video alone),
``vace_combined`` (one VACE call with first frame + depth in one control), and
``ddim_inversion`` (the full-scene baseline: the rendered RGB clip is encoded with the Wan
VAE, inverted with the I2V expert's own ODE from t = 0 to t_max under ``source_prompt`` with
guidance 1 (:func:`poe_backend.families.wan.experts.invert`), then regenerated from there under
``prompt`` with ``i2v_guidance`` by the same ODE; always ``summed_velocity``, one expert).
A single expert runs the same sampler (``summed_velocity`` gives that model's own ODE
sampler). Trajectory-to-video, the paper's other baseline, needs a model diffusers does
not ship, so it is not here.

Inputs (per mode, :func:`poe_backend.bundle.required_passes`): the ``depth`` pass for the
modes with a depth control, ``rgb`` frame 0 as first frame unless ``first_frame`` names an
image, the whole ``rgb`` clip for ``ddim_inversion``; ``prompt`` and ``negative_prompt``
(default: :data:`~poe_backend.families.wan.declaration.NEGATIVE_PROMPT`, the one diffusers'
Wan examples pass). Inputs as Wan was trained on them:

* Frames: Wan2.1 runs at 16 fps (``FamilyFacts.native_fps``), so the simulation is sampled
  by time at 16 fps whatever the scene's rate (:class:`~poe_backend.tasks.video_io.ClipTiming`:
  model frame ``k`` at ``k/16`` s shows the captured frame nearest in time): a 2 s
  simulation baked at 24 fps (frames 1..49) is 33 frames, the I2V motion prior and the
  depth timing agree, and 81 frames are 5 s. ``num_frames`` / ``max_frames`` count these
  model frames; the first ``num_frames`` (default all) are cut to 4k+1.
* Depth: the control is VACE's per-frame min–max disparity
  (:func:`~poe_backend.tasks.video_io.depth_to_disparity_video`).

The task is bundle → conditions → :class:`~poe_backend.families.wan.runtime.WanRuntime`
experts → sampler → outputs: the runtime loads, encodes, plans (``offload``,
``fp8_storage``), places and decodes; :meth:`Sim2VideoTask.model_roles` names what the
model cache keeps across jobs. Outputs, every video at 16 fps: ``video.mp4`` (the particle drawn by
weight with the seed), one MP4 per particle, ``latents.pt`` (all particles), what each expert saw (the
depth control ``control_depth.mp4``, the resized first frame ``first_frame.png``, for
``ddim_inversion`` the inverted render clip ``renders.mp4``; the manifest's
``expert_inputs`` maps each expert to them), and the manifest with every parameter, the
seed, the model sources and the timing (``size.fps`` the model rate, ``size.scene_fps``
the bundle's, ``timing``: the scene frame of every model frame, both times, the largest
timing error).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field

from poe_backend.bundle import VIDEO_MAX_FRAMES, VIDEO_MAX_SIDE, Bundle, BundleError, required_passes
from poe_backend.families.wan.declaration import NEGATIVE_PROMPT
from poe_backend.sampling import Factor, ProductOfExperts, SampleResult
from poe_backend.sampling.experts import Conditioning
from poe_backend.sampling.samplers import Transport
from poe_backend.sampling.schedules import shifted_levels
from poe_backend.tasks import video_io
from poe_backend.tasks.base import (
    JobCost, SamplerName, Task, TaskContext, TaskParams, TaskResult, metropolis_field, planned_sampler_cost, run_sampler, seed_for, transport_field,
)
from poe_backend.tasks.images import OffloadName
from poe_backend.tasks.requirements import sim2video_pairing, sim2video_transformers

class Sim2VideoParams(TaskParams):
    mode: Literal["product", "i2v", "depth", "vace_combined", "ddim_inversion"] = "product"
    pairing: Literal["auto", "i2v_vace", "shared_vace"] = Field("auto", description="auto: shared_vace for the preview preset, else i2v_vace")
    prompt: str | None = Field(None, description="defaults to the bundle's prompt")
    negative_prompt: str = Field(NEGATIVE_PROMPT, description="default: the negative prompt of diffusers' Wan I2V and VACE examples")
    source_prompt: str | None = Field(None, description="ddim_inversion: the prompt the render is inverted under (default: prompt)")
    first_frame: str | None = Field(None, description="image path relative to the bundle (inside it); default: the rgb pass at the first frame")
    num_frames: int | None = Field(None, ge=5, le=241, description="first N frames at Wan's 16 fps, cut to 4k+1 (at most max_frames); default all the simulation lasts, up to max_frames")
    height: int | None = Field(None, ge=16, le=1280, description="at most max_side; default: the bundle's, scaled so its longer side fits max_side, rounded down to 16")
    width: int | None = Field(None, ge=16, le=1280, description="at most max_side; default: the bundle's, scaled so its longer side fits max_side, rounded down to 16")
    max_side: int = Field(VIDEO_MAX_SIDE, ge=16, le=1280, description="cap on the longer side (Wan2.1's native 832 at 480p)")
    max_frames: int = Field(VIDEO_MAX_FRAMES, ge=5, le=241, description="cap on the frame count at 16 fps (Wan2.1's native 81 = 5 s)")
    particles: int = Field(
        1, ge=1, le=64,
        description="independent alternatives: as in insertion (a Σλ = 2 product, no reward), the weights of a 10^6-value video latent "
        "carry no quality signal, so more particles cost P times and select on noise",
    )
    sampler: SamplerName = "fkc"
    levels: int = Field(30, ge=2, le=1000)
    langevin_steps: int = Field(1, ge=0, le=50)
    step_scale: float = Field(0.5, gt=0.0, le=4.0)
    metropolis: bool = metropolis_field()
    transport: Transport = transport_field()
    t_max: float = Field(0.98, ge=0.5, lt=1.0)
    flow_shift: float = Field(3.0, ge=1.0, le=20.0, description="Wan's time shift (3 for 480p, 5 for 720p)")
    i2v_weight: float = Field(1.0, gt=0.0, le=8.0)
    depth_weight: float = Field(1.0, gt=0.0, le=8.0)
    i2v_guidance: float = Field(5.0, ge=1.0, le=20.0)
    depth_guidance: float = Field(5.0, ge=1.0, le=20.0)
    control_scale: float = Field(1.0, ge=0.0, le=4.0)
    cond_weight: float = Field(
        0.0, ge=0.0, le=10.0,
        description="conditional experts (product mode): the first-frame expert, the child, aligned to the depth expert, its parent, over the whole clip (0: off)",
    )
    vace_latent_mask: Literal["resize", "exact"] = "resize"
    offload: OffloadName = "auto"
    fp8_storage: bool = Field(False, description="auto may store transformer weights in fp8 (half the memory, compute stays bf16)")
    seed: int | None = Field(None, description="default: the bundle's seed")
    save_particles: bool = True

    PREVIEW: ClassVar[dict] = {"levels": 12, "langevin_steps": 0, "particles": 1, "height": 240, "width": 416, "num_frames": 33}


class Sim2VideoTask(Task):
    name = "sim2video"
    Params = Sim2VideoParams
    kind = "video"
    video_family = "wan"

    def model_roles(self, context: TaskContext) -> list[str]:
        from poe_backend.families.wan.runtime import WanRuntime

        params: Sim2VideoParams = context.params.effective()
        return WanRuntime.roles(sim2video_transformers(params.mode, sim2video_pairing(params.pairing, context.models)))

    def run(self, context: TaskContext) -> TaskResult:
        from poe_backend.models.specs import get_spec
        from poe_backend.families.wan.runtime import WanRuntime

        started = time.perf_counter()
        params: Sim2VideoParams = context.params.effective()
        bundle = context.bundle
        for name in required_passes(self.name, params.model_dump()):
            if name not in bundle.passes:
                raise BundleError(f"passes.{name}", f"sim2video mode {params.mode!r} needs the {name!r} pass")
        pairing = sim2video_pairing(params.pairing, context.models)
        seed = seed_for(context)
        prompt = bundle.prompt if params.prompt is None else params.prompt
        fps = video_io.native_fps(self.video_family)
        available = len(video_io.model_frames(bundle, fps))
        size = video_io.capped_size(bundle, params.height, params.width, params.num_frames, available=available, max_side=params.max_side, max_frames=params.max_frames)
        timing = video_io.clip_timing(bundle, fps, size.max_frames, strict="num_frames" in context.params.model_fields_set)
        frames = timing.frames
        inputs = read_inputs(context, params, frames, size.height, size.width)

        runtime = WanRuntime(sim2video_transformers(params.mode, pairing), len(frames), size.height, size.width, preset=context.models, device=context.device)
        result, described, levels, seconds = sample(runtime, params, pairing, prompt, inputs, seed, context)
        chosen = result.chosen_index(seed)
        outputs = write_outputs(context, runtime, result, chosen, inputs, timing.fps, params.save_particles)
        manifest = {
            "task": self.name,
            "params": params.model_dump(),
            "seed": seed,
            "prompt": prompt,
            "models": context.models,
            "model_sources": {role: get_spec(role, context.models).describe() for role in WanRuntime.roles(runtime.kinds)},
            "placement": runtime.describe(),
            "pairing": pairing,
            "experts": described,
            "expert_inputs": expert_inputs(described, params.mode),
            "frames": frames,
            "timing": timing.describe(),
            "size": {"height": size.height, "width": size.width, "num_frames": len(frames), "fps": timing.fps, "scene_fps": bundle.fps, "capped_from": size.capped_from},
            "levels": levels,
            "stats": result.stats(),
            "log_weights": video_io.finite_log_weights(result.log_weights),
            "chosen_particle": chosen,
            "seconds": {**seconds, "total": time.perf_counter() - started},
            "device": str(context.device),
        }
        return TaskResult(kind="video", primary="video", outputs=outputs, manifest=manifest)

    def planned_cost(self, bundle: Bundle, params: Sim2VideoParams) -> JobCost:
        """The mode's experts (:func:`mode_experts`) on the whole clip's Wan latent at the
        size and frame count :meth:`run` generates, two forwards per evaluation under CFG
        (guidance above 1), the conditioned first-frame expert three times that;
        ``ddim_inversion`` adds its inversion (one unguided forward per level gap) before
        its summed-velocity run."""
        from poe_backend.families.wan.experts import latent_shape

        requested, params = params, params.effective()
        fps = video_io.native_fps(self.video_family)
        size = video_io.capped_size(bundle, params.height, params.width, params.num_frames, available=len(video_io.model_frames(bundle, fps)), max_side=params.max_side,
                                    max_frames=params.max_frames)
        frames = len(video_io.clip_timing(bundle, fps, size.max_frames, strict="num_frames" in requested.model_fields_set).frames)
        _, latent_frames, latent_height, latent_width = latent_shape(frames, size.height, size.width)
        experts = mode_experts(params)
        inversion = params.mode == "ddim_inversion"
        sampler = "summed_velocity" if inversion else params.sampler
        levels = sim2video_levels(params)
        nfe, forwards = planned_sampler_cost(sampler, levels, expert_passes=[1 if guidance == 1.0 else 2 for guidance, _ in experts], total_weight=sum(weight for _, weight in experts),
                                             children=[0] if conditioned(params) else [], langevin_steps=params.langevin_steps, transport=params.transport)
        inverted = len(levels) - 1 if inversion else 0
        return JobCost(particles=params.particles, nfe=nfe + inverted, forwards=forwards + inverted, tokens=latent_frames * (latent_height // 2) * (latent_width // 2),
                       width=size.width, height=size.height, frames=frames)


def mode_experts(params: Sim2VideoParams) -> list[tuple[float, float]]:
    """``(guidance, weight)`` of each expert of ``params.mode``, in the factor order
    :func:`sample` builds them: the first-frame expert, the depth expert, or the one
    combined VACE call."""
    first_frame = [(params.i2v_guidance, params.i2v_weight)] if params.mode in ("product", "i2v", "ddim_inversion") else []
    depth = [(params.depth_guidance, params.depth_weight)] if params.mode in ("product", "depth") else []
    combined = [(params.depth_guidance, 1.0)] if params.mode == "vace_combined" else []
    return first_frame + depth + combined


def conditioned(params: Sim2VideoParams) -> bool:
    """Whether the first-frame expert is conditioned on the depth expert (product mode with
    ``cond_weight`` > 0)."""
    return params.mode == "product" and params.cond_weight > 0.0


def sim2video_levels(params: Sim2VideoParams) -> list[float]:
    """The annealing levels: Wan's shifted grid (shift ``flow_shift``) from ``t_max`` to 0."""
    return shifted_levels(params.levels, math.log(params.flow_shift), t_max=params.t_max)


#: Expert (as the manifest's ``experts`` names it) -> {its input: the output that holds it}.
EXPERT_INPUTS: dict[str, dict[str, str]] = {
    "wan_i2v": {"first_frame": "first_frame"},
    "wan_vace_first_frame": {"first_frame": "first_frame"},
    "wan_vace_depth": {"control": "control_depth"},
    "wan_vace_first_frame_and_depth": {"first_frame": "first_frame", "control": "control_depth"},
}


def expert_inputs(described: list[dict], mode: str) -> dict[str, dict[str, str]]:
    """The manifest's ``expert_inputs``: what each expert of ``described`` was given, as
    output names; under ``ddim_inversion`` the first-frame expert also inverted the render
    clip (``renders``)."""
    inputs = {entry["expert"]: dict(EXPERT_INPUTS[entry["expert"]]) for entry in described}
    if mode == "ddim_inversion":
        for entry in inputs.values():
            entry["inverted"] = "renders"
    return inputs


def read_inputs(context: TaskContext, params: Sim2VideoParams, frames: list[int], height: int, width: int) -> dict[str, torch.Tensor]:
    """What the mode reads from the bundle at the model frames' scene ``frames``:
    ``first_frame`` ``(3, H, W)``, ``depth`` (the VACE depth control video ``(F, 3, H, W)``),
    ``renders`` (the RGB clip ``(F, 3, H, W)`` for ddim_inversion), all in [0, 1]."""
    bundle, inputs = context.bundle, {}
    if params.mode != "depth":
        inputs["first_frame"] = (video_io.read_image(bundle.pass_path("rgb", frames[0]), height, width, field="passes.rgb")
                                 if params.first_frame is None else video_io.read_first_frame(bundle, params.first_frame, height, width))
    if params.mode in ("product", "depth", "vace_combined"):
        inputs["depth"] = video_io.depth_to_disparity_video(video_io.read_depth_frames(bundle, frames, height, width))
    if params.mode == "ddim_inversion":
        inputs["renders"] = video_io.read_rgb_frames(bundle, frames, height, width)
    return inputs


def sample(runtime, params: Sim2VideoParams, pairing: str, prompt: str, inputs: dict[str, torch.Tensor], seed: int,
           context: TaskContext) -> tuple[SampleResult, list[dict], list[float], dict[str, float]]:
    """Encode, plan, build the mode's experts and run the sampler; returns the result, the
    experts as the manifest lists them, the levels and the seconds spent loading/encoding
    and sampling (inversion included). The experts (and with them every reference to the
    transformers) die with this call, before the decode."""
    from poe_backend.families.wan import experts as wan

    started = time.perf_counter()
    source_prompt = prompt if params.source_prompt is None else params.source_prompt
    positive, negative, source = runtime.encode_prompts([prompt, params.negative_prompt, source_prompt])
    image_embeds = runtime.encode_image(inputs["first_frame"]) if "i2v" in runtime.kinds else None
    runtime.plan(offload=params.offload, fp8_storage=params.fp8_storage, particles=params.particles, conditioned=["i2v" if pairing == "i2v_vace" else "vace"] if conditioned(params) else [])
    num_frames = runtime.num_frames

    factors, described = [], []
    if params.mode in ("product", "i2v", "ddim_inversion"):
        if pairing == "i2v_vace":
            condition = runtime.i2v_condition(inputs["first_frame"])

            def first_frame_expert(embeds, negatives, guidance):
                return "wan_i2v", runtime.i2v_expert(condition, image_embeds, embeds, negatives, guidance)
        else:
            control = runtime.vace_control(*wan.first_frame_control_inputs(inputs["first_frame"], num_frames), latent_mask=params.vace_latent_mask)

            def first_frame_expert(embeds, negatives, guidance):
                return "wan_vace_first_frame", runtime.vace_expert(control, embeds, negatives, guidance, params.control_scale)

        name, expert = first_frame_expert(positive, negative, params.i2v_guidance)
        factors.append(Factor(expert, params.i2v_weight))
        described.append({"expert": name, "weight": params.i2v_weight, "guidance": params.i2v_guidance})
    if params.mode in ("product", "depth"):
        control = runtime.vace_control(*wan.depth_control_inputs(inputs["depth"]))
        factors.append(Factor(runtime.vace_expert(control, positive, negative, params.depth_guidance, params.control_scale), params.depth_weight))
        described.append({"expert": "wan_vace_depth", "weight": params.depth_weight, "guidance": params.depth_guidance, "control_scale": params.control_scale})
    if params.mode == "vace_combined":
        control = runtime.vace_control(*wan.first_frame_and_depth_control_inputs(inputs["first_frame"], inputs["depth"]), latent_mask=params.vace_latent_mask)
        factors.append(Factor(runtime.vace_expert(control, positive, negative, params.depth_guidance, params.control_scale), 1.0))
        described.append({"expert": "wan_vace_first_frame_and_depth", "weight": 1.0, "guidance": params.depth_guidance, "control_scale": params.control_scale})

    links = [Conditioning(child=0, parents=(1,), weight=params.cond_weight)] if conditioned(params) else []
    if links:
        described[0]["conditioned_on"] = [described[1]["expert"]]
    product = ProductOfExperts(factors, conditioning=links)
    levels = sim2video_levels(params)
    generator = torch.Generator().manual_seed(seed)
    shape = (params.particles, *runtime.event_shape)
    noise = torch.randn(shape, generator=generator).to(context.device)
    if params.mode == "ddim_inversion":
        source_latents = runtime.encode_video(inputs["renders"].permute(1, 0, 2, 3)[None] * 2 - 1)
        _, inverting = first_frame_expert(source, None, 1.0)
        sampling_started = time.perf_counter()
        start = wan.invert(inverting, source_latents.expand(*shape), levels)
        result = run_sampler("summed_velocity", product, noise, levels, generator, context, start=start)
    else:
        sampling_started = time.perf_counter()
        result = run_sampler(params.sampler, product, noise, levels, generator, context, langevin_steps=params.langevin_steps, step_scale=params.step_scale, metropolis=params.metropolis,
                             transport=params.transport)
    seconds = {"load_and_encode": sampling_started - started, "sampling": time.perf_counter() - sampling_started}
    return result, described, levels, seconds


def write_outputs(context: TaskContext, runtime, result: SampleResult, chosen: int, inputs: dict[str, torch.Tensor], fps: float, save_particles: bool) -> dict[str, Path]:
    """``latents.pt`` (all particles), ``video.mp4`` (particle ``chosen``), ``particles/*.mp4``
    (decoding through the runtime's plan) and what the experts saw, from :func:`read_inputs`:
    ``first_frame.png``, the depth control ``control_depth.mp4``, the inverted render clip
    ``renders.mp4``. Videos at ``fps``, the model's rate."""
    out_dir = context.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    latents_path = out_dir / "latents.pt"
    torch.save({"latents": result.particles.cpu(), "log_weights": result.log_weights.cpu()}, latents_path)
    outputs: dict[str, Path] = {"latents": latents_path, **video_io.write_particle_videos(out_dir, runtime.decode, result.particles, chosen, fps, save_particles)}
    if "first_frame" in inputs:
        outputs["first_frame"] = video_io.write_png(out_dir / "first_frame.png", inputs["first_frame"])
    if "depth" in inputs:
        outputs["control_depth"] = video_io.write_mp4(out_dir / "control_depth.mp4", inputs["depth"], fps)
    if "renders" in inputs:
        outputs["renders"] = video_io.write_mp4(out_dir / "renders.mp4", inputs["renders"], fps)
    return outputs

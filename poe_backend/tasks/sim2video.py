"""``sim2video``: first frame + depth video of the baked simulation + prompt -> video.

Product (paper, sim-to-video): Wan2.1 depth-to-video (VACE with the normalised-disparity
video as control) × Wan2.1 image-to-video (the first frame), both on the Wan latent
``(16, F', H/8, W/8)``, sampled with the score-only Feynman-Kac sampler by default.
``pairing`` picks the I2V expert: ``i2v_vace`` = Wan2.1-I2V-14B (the paper's), or
``shared_vace`` = the same VACE transformer with the first frame as control (half the
memory; the ``preview`` preset's only option, as there is no 1.3B I2V).

Baselines (``mode``): ``i2v`` (the I2V expert alone), ``depth`` (depth-to-video alone),
``vace_combined`` (one VACE call with first frame + depth in one control), and
``ddim_inversion`` (the full-scene baseline: the rendered RGB clip is encoded with the Wan
VAE, inverted with the I2V expert's own ODE from t = 0 to t_max under ``source_prompt`` with
guidance 1 (:func:`poe_backend.experts.wan.invert`), then regenerated from there under
``prompt`` with ``i2v_guidance`` by the same ODE; always ``summed_velocity``, one expert).
A single expert runs the same sampler (``summed_velocity`` gives that model's own ODE
sampler). Trajectory-to-video, the paper's other baseline, needs a model diffusers does
not ship, so it is not here.

Inputs: the bundle's ``depth`` pass (and ``rgb`` frame 0 as first frame unless
``first_frame`` names an image), ``prompt``. Frames: the first ``num_frames`` (default
all), cut to 4k+1. Outputs: ``video.mp4`` (highest-weight particle), one MP4 per particle,
``latents.pt`` (all particles), the depth control as ``control_depth.mp4``, and the
manifest with every parameter, the seed and the model sources.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field

from poe_backend.bundle import VIDEO_MAX_FRAMES, VIDEO_MAX_SIDE, BundleError
from poe_backend.sampling import Factor, ProductOfExperts
from poe_backend.sampling.schedules import shifted_levels
from poe_backend.tasks import video_io
from poe_backend.tasks.base import SamplerName, Task, TaskContext, TaskParams, TaskResult, run_sampler, seed_for




class Sim2VideoParams(TaskParams):
    mode: Literal["product", "i2v", "depth", "vace_combined", "ddim_inversion"] = "product"
    pairing: Literal["auto", "i2v_vace", "shared_vace"] = Field("auto", description="auto: shared_vace for the preview preset, else i2v_vace")
    prompt: str | None = Field(None, description="defaults to the bundle's prompt")
    negative_prompt: str = ""
    source_prompt: str | None = Field(None, description="ddim_inversion: the prompt the render is inverted under (default: prompt)")
    first_frame: str | None = Field(None, description="image path relative to the bundle (inside it); default: the rgb pass at the first frame")
    num_frames: int | None = Field(None, ge=5, le=241, description="first N frames, cut to 4k+1 (at most max_frames); default all up to max_frames")
    height: int | None = Field(None, ge=16, le=1280, description="at most max_side; default: the bundle's, scaled so its longer side fits max_side, rounded down to 16")
    width: int | None = Field(None, ge=16, le=1280, description="at most max_side; default: the bundle's, scaled so its longer side fits max_side, rounded down to 16")
    max_side: int = Field(VIDEO_MAX_SIDE, ge=16, le=1280, description="cap on the longer side (Wan2.1's native 832 at 480p)")
    max_frames: int = Field(VIDEO_MAX_FRAMES, ge=5, le=241, description="cap on the frame count (Wan2.1's native 81)")
    particles: int = Field(2, ge=1, le=64)
    sampler: SamplerName = "fkc"
    levels: int = Field(30, ge=2, le=1000)
    langevin_steps: int = Field(1, ge=0, le=50)
    step_scale: float = Field(0.5, gt=0.0, le=4.0)
    t_max: float = Field(0.98, ge=0.5, lt=1.0)
    flow_shift: float = Field(3.0, ge=1.0, le=20.0, description="Wan's time shift (3 for 480p, 5 for 720p)")
    i2v_weight: float = Field(1.0, gt=0.0, le=8.0)
    depth_weight: float = Field(1.0, gt=0.0, le=8.0)
    i2v_guidance: float = Field(5.0, ge=1.0, le=20.0)
    depth_guidance: float = Field(5.0, ge=1.0, le=20.0)
    control_scale: float = Field(1.0, ge=0.0, le=4.0)
    vace_latent_mask: Literal["resize", "exact"] = "resize"
    offload: Literal["auto", "none", "model", "group", "sequential"] = "auto"
    seed: int | None = Field(None, description="default: the bundle's seed")
    save_particles: bool = True

    PREVIEW: ClassVar[dict] = {"levels": 12, "langevin_steps": 0, "particles": 1, "height": 240, "width": 416, "num_frames": 33}


class Sim2VideoTask(Task):
    name = "sim2video"
    Params = Sim2VideoParams
    kind = "video"

    def run(self, context: TaskContext) -> TaskResult:
        from poe_backend.experts import wan

        started = time.perf_counter()
        params: Sim2VideoParams = context.params.effective()
        bundle = context.bundle
        if "depth" not in bundle.passes and params.mode not in ("i2v", "ddim_inversion"):
            raise BundleError("passes.depth", "sim2video needs the 'depth' pass")
        pairing = wan.default_pairing(context.models) if params.pairing == "auto" else params.pairing
        seed = seed_for(context)
        prompt = bundle.prompt if params.prompt is None else params.prompt
        size = video_io.capped_size(bundle, params.height, params.width, params.num_frames, max_side=params.max_side, max_frames=params.max_frames)
        height, width = size.height, size.width
        frames = video_io.clip_frames(bundle, size.max_frames, strict="num_frames" in context.params.model_fields_set)
        num_frames = len(frames)
        first_frame = self._first_frame(context, frames[0], height, width)
        uses_depth = params.mode in ("product", "depth", "vace_combined")
        depth_video = video_io.depth_to_disparity_video(video_io.read_depth_frames(bundle, frames, height, width)) if uses_depth else None

        uses_i2v = params.mode in ("product", "i2v", "ddim_inversion")
        needs_i2v_model = pairing == "i2v_vace" and uses_i2v
        needs_vace = uses_depth or pairing == "shared_vace"
        components = wan.load_wan(context.models, vace=needs_vace, i2v=needs_i2v_model, device=context.device, offload=params.offload)
        positive, negative = components.encode_prompt(prompt, params.negative_prompt)
        specs = []  # (name, build(placement) -> expert, weight, description); conditioning computed now
        make_i2v = None  # (prompt embeds, negative, guidance, placement) -> the I2V expert
        if uses_i2v:
            if needs_i2v_model:
                condition, image_embeds = components.i2v_condition(first_frame, num_frames), components.encode_image(first_frame)
                make_i2v = lambda embeds, negatives, guidance, placement: wan.WanI2VExpert(components.i2v_transformer, condition, image_embeds, embeds, negatives, guidance, placement=placement)
                name = "wan_i2v"
            else:
                control = wan.vace_first_frame_control(components, first_frame, num_frames, latent_mask=params.vace_latent_mask)
                make_i2v = lambda embeds, negatives, guidance, placement: wan.WanVACEExpert(components.vace_transformer, control, embeds, negatives, guidance, params.control_scale, placement=placement)
                name = "wan_vace_first_frame"
            build = lambda placement: make_i2v(positive, negative, params.i2v_guidance, placement)
            specs.append((name, build, params.i2v_weight, {"guidance": params.i2v_guidance}))
        if params.mode == "ddim_inversion":
            renders = video_io.read_rgb_frames(bundle, frames, height, width)
            source_latents = components.encode_video(renders.permute(1, 0, 2, 3)[None] * 2 - 1)
            source_embeds = components.encode_prompt(prompt if params.source_prompt is None else params.source_prompt)[0]
        if params.mode in ("product", "depth"):
            control = wan.vace_depth_control(components, depth_video)
            specs.append(("wan_vace_depth", self._vace(components, control, positive, negative, params.depth_guidance, params), params.depth_weight, {"guidance": params.depth_guidance, "control_scale": params.control_scale}))
        if params.mode == "vace_combined":
            control = wan.vace_first_frame_and_depth_control(components, first_frame, depth_video, latent_mask=params.vace_latent_mask)
            specs.append(("wan_vace_first_frame_and_depth", self._vace(components, control, positive, negative, params.depth_guidance, params), 1.0, {"guidance": params.depth_guidance, "control_scale": params.control_scale}))
        components.free_encoders()
        shape = (params.particles, *wan.latent_shape(num_frames, height, width))
        placement = components.place_transformers(params.particles, shape[1:])
        factors = [Factor(build(placement), weight) for _, build, weight, _ in specs]
        described = [{"expert": name, "weight": weight, **extra} for name, _, weight, extra in specs]

        product = ProductOfExperts(factors)
        levels = shifted_levels(params.levels, math.log(params.flow_shift), t_max=params.t_max)
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(shape, generator=generator).to(context.device)
        sampling_started = time.perf_counter()
        if params.mode == "ddim_inversion":
            inverting = make_i2v(source_embeds, None, 1.0, placement)
            start = wan.invert(inverting, source_latents.expand(params.particles, *shape[1:]), levels)
            result = run_sampler("summed_velocity", product, noise, levels, generator, context, start=start)
        else:
            result = run_sampler(params.sampler, product, noise, levels, generator, context, langevin_steps=params.langevin_steps, step_scale=params.step_scale)
        sampling_seconds = time.perf_counter() - sampling_started

        components.make_room_for_decode()
        outputs = self._write_outputs(context, components, result, depth_video, bundle.fps, params.save_particles)
        manifest = {
            "task": self.name,
            "params": params.model_dump(),
            "seed": seed,
            "prompt": prompt,
            "models": context.models,
            "model_sources": components.sources,
            "placement": components.placement.describe() if components.placement else None,
            "pairing": pairing,
            "experts": described,
            "frames": frames,
            "size": {"height": height, "width": width, "num_frames": num_frames, "fps": bundle.fps, "capped_from": size.capped_from},
            "levels": levels,
            "stats": result.stats(),
            "log_weights": video_io.finite_log_weights(result.log_weights),
            "best_particle": result.best_index(),
            "seconds": {"sampling": sampling_seconds, "total": time.perf_counter() - started},
            "device": str(context.device),
        }
        return TaskResult(kind="video", primary="video", outputs=outputs, manifest=manifest)

    @staticmethod
    def _vace(components, control, positive, negative, guidance: float, params: Sim2VideoParams):
        from poe_backend.experts import wan

        return lambda placement: wan.WanVACEExpert(components.vace_transformer, control, positive, negative, guidance, params.control_scale, placement=placement)

    def _first_frame(self, context: TaskContext, frame: int, height: int, width: int) -> torch.Tensor:
        path_text = context.params.first_frame
        if path_text is None:
            return video_io.read_image(context.bundle.pass_path("rgb", frame), height, width, field="passes.rgb")
        return video_io.read_first_frame(context.bundle, path_text, height, width)

    def _write_outputs(self, context: TaskContext, components, result, depth_video, fps: float, save_particles: bool) -> dict[str, Path]:
        out_dir = context.out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        outputs: dict[str, Path] = {}
        latents_path = out_dir / "latents.pt"
        torch.save({"latents": result.particles.cpu(), "log_weights": result.log_weights.cpu()}, latents_path)
        outputs["latents"] = latents_path
        best = result.best_index()
        for index in range(result.particles.shape[0]):
            if index != best and not save_particles:
                continue
            video = (components.decode_latents(result.particles[index : index + 1])[0].permute(1, 0, 2, 3) + 1) / 2
            if index == best:
                outputs["video"] = video_io.write_mp4(out_dir / "video.mp4", video, fps)
            if save_particles:
                (out_dir / "particles").mkdir(exist_ok=True)
                outputs[f"particle_{index:02d}"] = video_io.write_mp4(out_dir / "particles" / f"particle_{index:02d}.mp4", video, fps)
        if depth_video is not None:
            outputs["control_depth"] = video_io.write_mp4(out_dir / "control_depth.mp4", depth_video, fps)
        return outputs

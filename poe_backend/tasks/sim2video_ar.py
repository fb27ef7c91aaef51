"""``sim2video_ar``: first frame + RGB renders of the simulation -> video, autoregressively.

Product (paper, autoregressive sim-to-video): FramePack × a Gaussian around the
VAE-encoded renders, ``N(z_render, s² I)`` (:mod:`poe_backend.families.analytic.render_gaussian`),
on FramePack's latent, one section at a time with autoregressive annealing and Gibbs
sweeps (:func:`poe_backend.sampling.autoregressive.sample_autoregressive`). A chunk is a
FramePack section of ``latent_window_size`` latent frames; chunk ``g``'s product is the
FramePack expert conditioned on the chunks generated before it times the Gaussian around
its time section's render latents (the render clip is encoded once, then sliced).

Baseline (``mode="framepack"``): FramePack alone (image-to-video from the first frame),
same sampler and sections.

Inputs: the bundle's ``rgb`` pass, ``prompt``. FramePack runs at 30 fps
(``FamilyFacts.native_fps``), so the simulation is sampled by time at 30 fps whatever the
scene's rate (:class:`~poe_backend.tasks.video_io.ClipTiming`: model frame ``k`` at
``k/30`` s shows the captured frame nearest in time; a 24 fps capture repeats every fourth
frame); the clip is the first ``F = 1 + 4·sections·window`` of these model frames, and the
first frame is the first of them unless ``first_frame`` names an image.
Stiffness: the sampler's transport step pulls each particle by ``Δu·λ/(s² + σ²)``
towards the render; the default ``transport="euler"`` splits level gaps too wide for a
stable step into substeps (more NFE), so a large ``render_weight`` with few levels costs
time rather than diverging (``render_weight`` near 1 with a lower ``render_std`` is the
cheaper pull), while ``"exponential"`` solves the pull for any gap without substeps.

The task is bundle → conditions → :class:`~poe_backend.families.framepack.runtime.FramePackRuntime`
experts → sampler → outputs: the runtime loads, encodes (prompt embeddings cached across
jobs), plans (``offload``, ``fp8_storage``), owns the section layout and decodes;
:meth:`Sim2VideoARTask.model_roles` names what the model cache keeps across jobs.

Outputs, every video at 30 fps: ``video.mp4`` (a particle drawn with the seed: the
autoregressive sampler ends every chunk with an equal-weight resampling, so all particles
are equally weighted), one MP4 per particle, ``latents.pt``, what the experts saw
(``renders.mp4``, the clip the render Gaussian is centred on, and ``first_frame.png``,
FramePack's first frame; the manifest's ``expert_inputs`` maps each expert to them), and
the manifest with the timing (``size.fps`` the model rate, ``size.scene_fps`` the
bundle's, ``timing``: the scene frame of every model frame, both times, the largest
timing error).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field

from poe_backend.bundle import VIDEO_MAX_FRAMES, VIDEO_MAX_SIDE, Bundle, BundleError
from poe_backend.sampling import Factor, ProductOfExperts
from poe_backend.sampling.autoregressive import AutoregressiveResult
from poe_backend.sampling.budget import passes_per_round, planned_autoregressive_nfe
from poe_backend.sampling.resampling import chosen_particle
from poe_backend.sampling.samplers import Transport
from poe_backend.tasks import video_io
from poe_backend.tasks.base import (
    SAMPLERS, JobCost, SamplerName, Task, TaskContext, TaskParams, TaskResult, cost_options, metropolis_field, sampler_options, seed_for, transport_field,
)
from poe_backend.tasks.images import OffloadName


#: Expert (as the manifest's ``experts`` names it) -> {its input: the output that holds it}.
EXPERT_INPUTS: dict[str, dict[str, str]] = {"framepack": {"first_frame": "first_frame"}, "render_gaussian": {"renders": "renders"}}


class Sim2VideoARParams(TaskParams):
    """Defaults from the miniature (``benchmarks/learned_autoregressive.py``: a learned
    autoregressive expert over 4 sections × this task's render Gaussians, exact answer; the
    figures are in README.md, Measurements, and the sim2video_ar bullet of The sampling
    math):

    * ``gibbs_sweeps=0``: a sweep re-draws a section given the sections *before* it only
      (FramePack conditions on the past), which loses its fit to the sections after it:
      at P = 1 and 2 one sweep moved the draw further from the exact answer, with the
      learned expert and with its exact conditionals alike, and it costs more evaluations (620 vs 440 NFE over
      4 sections; 130 vs 110 FramePack forwards over the 2 sections of a 73-frame clip).
    * ``particles=1``: the section weights carry the normaliser of the next section's
      product, real information about how a history fits the later renders, but P = 1 /
      2 / 4 scored alike within noise and each particle costs a full run; the error left is
      the myopic order itself (the exact conditionals score the same), which only many
      particles repair (P = 8). In a 10^5-value section latent the transport noise in those
      weights (as in ``sim2video``) would drown that information.
    * ``langevin_steps=1``, 25 levels: 4 steps or 100 levels moved the exact-conditional
      miniature by less than its noise.
    * ``transport="euler"`` (:func:`poe_backend.tasks.base.transport_field`): the
      exponential step was worse in every cell of the miniature, learned and exact
      conditionals, P = 1 and 2 (``--transport euler exponential``), for 15 % fewer
      forwards (a 73-frame clip, 2 sections at 480p: 94 vs 110 FramePack forwards). At the
      preview's 10 levels and no corrector (``--preset preview``) it was far worse: Euler's
      preview (23 forwards per section) beats the exponential quality run (47) at half its
      cost.
    """

    mode: Literal["product", "framepack"] = "product"
    sampling_type: Literal["inverted", "vanilla"] = Field("inverted", description="inverted: FramePackI2V_HY (anti-drifting); vanilla: FramePack-F1")
    prompt: str | None = Field(None, description="defaults to the bundle's prompt")
    negative_prompt: str = ""
    first_frame: str | None = Field(None, description="image path relative to the bundle (inside it); default: rgb frame 0")
    latent_window_size: int = Field(9, ge=1, le=33, description="latent frames per section (9 ≈ 33 pixel frames)")
    num_sections: int | None = Field(None, ge=1, le=64, description="default: as many as the bundle's frames allow")
    height: int | None = Field(None, ge=16, le=1280, description="at most max_side; default: the bundle's, scaled so its longer side fits max_side, rounded down to 16")
    width: int | None = Field(None, ge=16, le=1280, description="at most max_side; default: the bundle's, scaled so its longer side fits max_side, rounded down to 16")
    max_side: int = Field(VIDEO_MAX_SIDE, ge=16, le=1280, description="cap on the longer side")
    max_frames: int = Field(VIDEO_MAX_FRAMES, ge=5, le=241, description="cap on the frame count at FramePack's 30 fps (sections are dropped to fit)")
    particles: int = Field(1, ge=1, le=64, description="particles per run: SMC over section histories (see the class docstring)")
    sampler: SamplerName = "fkc"
    levels: int = Field(25, ge=2, le=1000)
    langevin_steps: int = Field(1, ge=0, le=50)
    step_scale: float = Field(0.5, gt=0.0, le=4.0)
    metropolis: bool = metropolis_field()
    transport: Transport = transport_field()
    t_max: float = Field(0.98, ge=0.5, lt=1.0)
    gibbs_sweeps: int = Field(0, ge=0, le=10, description="re-draws of the earlier sections after each new one, each given its own past only (see the class docstring)")
    gibbs_t: float = Field(0.5, gt=0.0, lt=1.0)
    render_std: float = Field(0.5, gt=0.0, le=100.0, description="s of N(render latent, s²I), latent units; w = 1/(2s²)")
    render_weight: float = Field(1.0, gt=0.0, le=8.0)
    framepack_weight: float = Field(1.0, gt=0.0, le=8.0)
    guidance_scale: float = Field(10.0, ge=1.0, le=32.0, description="FramePack's distilled guidance")
    true_cfg_scale: float = Field(1.0, ge=1.0, le=20.0)
    offload: OffloadName = "auto"
    fp8_storage: bool = Field(False, description="auto may store the transformer's weights in fp8 (half the memory, compute stays bf16)")
    seed: int | None = Field(None, description="default: the bundle's seed")
    save_particles: bool = True

    PREVIEW: ClassVar[dict] = {"levels": 10, "langevin_steps": 0, "particles": 1, "height": 256, "width": 448, "gibbs_sweeps": 0}


class Sim2VideoARTask(Task):
    name = "sim2video_ar"
    Params = Sim2VideoARParams
    kind = "video"
    video_family = "framepack"

    def model_roles(self, context: TaskContext) -> list[str]:
        from poe_backend.families.framepack.runtime import FramePackRuntime

        return FramePackRuntime.roles(context.params.effective().sampling_type)

    def run(self, context: TaskContext) -> TaskResult:
        from poe_backend.families.framepack.experts import num_pixel_frames
        from poe_backend.families.framepack.runtime import FramePackRuntime
        from poe_backend.models.specs import get_spec

        started = time.perf_counter()
        params: Sim2VideoARParams = context.params.effective()
        bundle = context.bundle
        seed = seed_for(context)
        prompt = bundle.prompt if params.prompt is None else params.prompt
        fps = video_io.native_fps(self.video_family)
        available = video_io.model_frames(bundle, fps)
        size = video_io.capped_size(bundle, params.height, params.width, None, available=len(available), max_side=params.max_side, max_frames=params.max_frames)
        window = params.latent_window_size
        num_sections = self._num_sections(len(available), size.max_frames, window, params.num_sections)
        timing = video_io.ClipTiming(fps, bundle.fps, available[: num_pixel_frames(num_sections, window)])
        frames = timing.frames
        renders = video_io.read_rgb_frames(bundle, frames, size.height, size.width)  # (F, 3, H, W) in [0, 1]
        first_frame = renders[0] if params.first_frame is None else video_io.read_first_frame(bundle, params.first_frame, size.height, size.width)

        runtime = FramePackRuntime(params.sampling_type, window, num_sections, size.height, size.width, preset=context.models, device=context.device)
        result, image_latents, levels, seconds = sample(runtime, params, prompt, renders, first_frame, seed, context)
        latents = runtime.assemble(image_latents.expand(params.particles, -1, -1, -1, -1), result.chunks)
        chosen = chosen_particle(torch.zeros(params.particles), seed)  # the chunks are equally weighted
        outputs = self._write_outputs(context, runtime, latents, chosen, renders, first_frame, timing.fps, params.save_particles)
        experts = ["framepack"] + (["render_gaussian"] if params.mode == "product" else [])
        manifest = {
            "task": self.name,
            "params": params.model_dump(),
            "seed": seed,
            "prompt": prompt,
            "models": context.models,
            "model_sources": {role: get_spec(role, context.models).describe() for role in FramePackRuntime.roles(params.sampling_type)},
            "placement": runtime.describe(),
            "experts": experts,
            "expert_inputs": {expert: dict(EXPERT_INPUTS[expert]) for expert in experts},
            "frames": frames,
            "timing": timing.describe(),
            "size": {"height": size.height, "width": size.width, "num_frames": len(frames), "fps": timing.fps, "scene_fps": bundle.fps, "sections": num_sections,
                     "latent_window_size": window, "capped_from": size.capped_from},
            "levels": levels,
            "stats": result.stats(),
            "chosen_particle": chosen,
            "seconds": {**seconds, "total": time.perf_counter() - started},
            "device": str(context.device),
        }
        return TaskResult(kind="video", primary="video", outputs=outputs, manifest=manifest)

    def planned_cost(self, bundle: Bundle, params: Sim2VideoARParams) -> JobCost:
        """Autoregressive annealing over the sections :meth:`run` generates (first passes
        and Gibbs re-draws, :func:`~poe_backend.sampling.budget.planned_autoregressive_nfe`),
        FramePack × the render Gaussian (closed-form: no forward), FramePack's levels for one
        section at its patch size 2 (the real and the tiny checkpoints'); FramePack costs one
        forward per evaluation, two under true CFG (``true_cfg_scale`` above 1)."""
        from poe_backend.families.framepack.experts import SPATIAL_FACTOR, framepack_levels, num_pixel_frames

        params = params.effective()
        fps = video_io.native_fps(self.video_family)
        available = len(video_io.model_frames(bundle, fps))
        size = video_io.capped_size(bundle, params.height, params.width, None, available=available, max_side=params.max_side, max_frames=params.max_frames)
        window = params.latent_window_size
        sections = self._num_sections(available, size.max_frames, window, params.num_sections)
        latent_height, latent_width = size.height // SPATIAL_FACTOR, size.width // SPATIAL_FACTOR
        expert_passes = [1 if params.true_cfg_scale == 1.0 else 2] + ([0] if params.mode == "product" else [])
        total_weight = params.framepack_weight + (params.render_weight if params.mode == "product" else 0.0)
        nfe = planned_autoregressive_nfe(params.sampler, framepack_levels(params.levels, window, latent_height, latent_width, t_max=params.t_max), num_chunks=sections,
                                         gibbs_sweeps=params.gibbs_sweeps, gibbs_t=params.gibbs_t, num_experts=len(expert_passes), total_weight=total_weight,
                                         **cost_options(params.sampler, langevin_steps=params.langevin_steps, transport=params.transport))
        return JobCost(particles=params.particles, nfe=nfe, forwards=nfe // len(expert_passes) * passes_per_round(expert_passes), tokens=window * (latent_height // 2) * (latent_width // 2),
                       width=size.width, height=size.height, frames=num_pixel_frames(sections, window))

    @staticmethod
    def _num_sections(available: int, max_frames: int, window: int, requested: int | None) -> int:
        """Sections of ``window`` latent frames: ``requested``, else as many as fit in
        ``min(available, max_frames)`` pixel frames (``1 + 4·sections·window``), counted at
        the model's rate (``available``: the model frames the simulation lasts)."""
        from poe_backend.families.framepack.experts import num_pixel_frames

        if requested is None:
            sections = (max_frames - 1) // (4 * window)
            if sections < 1:
                raise BundleError("frames", f"needs at least {num_pixel_frames(1, window)} model frames for one section of {window} latent frames, "
                                            f"the bundle's simulation lasts {available} (max_frames {max_frames})")
            return sections
        needed = num_pixel_frames(requested, window)
        if needed > available:
            raise BundleError("frames", f"{requested} sections of {window} latent frames need {needed} model frames, the bundle's simulation lasts {available}")
        if needed > max_frames:
            raise BundleError("params.num_sections", f"{requested} sections of {window} latent frames are {needed} frames, above max_frames={max_frames}")
        return requested

    @staticmethod
    def _write_outputs(context: TaskContext, runtime, latents: torch.Tensor, chosen: int, renders: torch.Tensor, first_frame: torch.Tensor, fps: float,
                       save_particles: bool) -> dict[str, Path]:
        """``latents.pt`` (all particles), ``video.mp4`` (particle ``chosen``, drawn
        uniformly with the job's seed: the particles are equally weighted, and particle 0
        of a systematic resampling is not a uniform draw), ``particles/*.mp4``,
        ``renders.mp4`` (``(F, 3, H, W)``) and ``first_frame.png`` (``(3, H, W)``), videos
        at ``fps``, the model's rate."""
        out_dir = context.out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        latents_path = out_dir / "latents.pt"
        torch.save({"latents": latents.cpu()}, latents_path)
        outputs: dict[str, Path] = {"latents": latents_path, **video_io.write_particle_videos(out_dir, runtime.decode, latents, chosen, fps, save_particles)}
        outputs["renders"] = video_io.write_mp4(out_dir / "renders.mp4", renders, fps)
        outputs["first_frame"] = video_io.write_png(out_dir / "first_frame.png", first_frame)
        return outputs


def sample(runtime, params: Sim2VideoARParams, prompt: str, renders: torch.Tensor, first_frame: torch.Tensor, seed: int,
           context: TaskContext) -> tuple[AutoregressiveResult, torch.Tensor, list[float], dict[str, float]]:
    """Encode, plan and run autoregressive annealing (FramePack × the render Gaussian per
    section); returns the result, the first frame's latent ``(1, C, 1, h, w)``, the levels
    and the seconds spent loading/encoding and sampling. The section experts die with this
    call, before the decode."""
    from poe_backend.families.analytic.render_gaussian import RenderGaussianExpert
    from poe_backend.sampling.autoregressive import sample_autoregressive

    started = time.perf_counter()
    texts = [prompt] + ([params.negative_prompt] if params.true_cfg_scale != 1.0 else [])
    embeddings = runtime.encode_prompts(texts)
    prompt_embeds, negative = embeddings[0], (embeddings[1] if len(embeddings) > 1 else None)
    image_embeds = runtime.encode_image(first_frame)
    runtime.plan(offload=params.offload, fp8_storage=params.fp8_storage, particles=params.particles)
    render_latents = runtime.encode_video(renders.permute(1, 0, 2, 3)[None] * 2 - 1)[0]  # (C, 1 + S·W, h, w)
    image_latents = render_latents[None, :, :1] if params.first_frame is None else runtime.encode_video(first_frame[None, :, None] * 2 - 1)
    count = params.particles

    def make_product(index: int, chunks: list[torch.Tensor | None]) -> ProductOfExperts:
        history = chunks[:index]
        if any(chunk is None for chunk in history):
            raise RuntimeError(f"chunk {index}: FramePack needs every earlier section")
        expert = runtime.section_expert(index, list(history), image_latents.expand(count, -1, -1, -1, -1), prompt_embeds, image_embeds,
                                        params.guidance_scale, negative, params.true_cfg_scale)
        factors = [Factor(expert, params.framepack_weight)]
        if params.mode == "product":
            factors.append(Factor(RenderGaussianExpert(runtime.render_section(render_latents, index), params.render_std), params.render_weight))
        return ProductOfExperts(factors)

    generator = torch.Generator().manual_seed(seed)
    chunk_noise = [torch.randn((count, *runtime.chunk_shape), generator=generator).to(context.device) for _ in range(runtime.num_sections)]
    levels = runtime.levels(params.levels, params.t_max)
    options = sampler_options(params.sampler, langevin_steps=params.langevin_steps, step_scale=params.step_scale, metropolis=params.metropolis,
                              transport=params.transport)
    sampling_started = time.perf_counter()
    result = sample_autoregressive(
        make_product, chunk_noise, levels, generator=generator, sampler=SAMPLERS[params.sampler],
        gibbs_sweeps=params.gibbs_sweeps, gibbs_t=params.gibbs_t, callback=context.callback, should_stop=context.should_stop, **options,
    )
    seconds = {"load_and_encode": sampling_started - started, "sampling": time.perf_counter() - sampling_started}
    return result, image_latents, levels, seconds

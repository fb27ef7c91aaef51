"""FramePack (HunyuanVideo-based autoregressive image-to-video) as a per-section expert.

A FramePack video is a first frame plus ``C`` sections of ``W`` latent frames
(``latent_window_size``, 9 by default ≈ 33 pixel frames each). Full latent, in time
order: ``[image, section_0, …, section_{C-1}]`` of shape ``(16, 1 + C·W, H/8, W/8)``,
VAE-scaled by ``z·0.476986`` (no mean/std); ``F = 1 + 4·C·W`` pixel frames. Each section is
one *chunk* of autoregressive annealing (:mod:`poe_backend.sampling.autoregressive`):
:class:`FramePackSectionExpert` is the velocity of one section's latent ``(P, 16, W, h, w)``
given clean history latents (at 1×, 2× and 4× compression) and the first frame — the
conditioning of diffusers' ``HunyuanVideoFramepackPipeline``, which this module reproduces
per section (:func:`section_conditioning`) instead of running its loop.

Sampling orders (``sampling_type``):

* ``inverted`` (``FramePackI2V_HY``, anti-drifting): sections are generated from the
  last to the first; generation step ``g`` makes time section ``C-1-g`` conditioned on the
  sections after it (history sizes ``[1, 2, 16]``) and on the first frame, with the
  pipeline's latent paddings.
* ``vanilla`` (``FramePack_F1``): in time order, conditioned on the sections before
  (history ``[16, 2, 1]``, the first frame's latent being the oldest history frame).

Chunk ``g`` of the sampler is generation step ``g``; :func:`time_section` maps it to the
time section and the Gaussian render expert uses that section's slice of the encoded
render clip (:meth:`FramePackRuntime.encode_video`: encode the whole clip once, since
the causal VAE treats frame 0 specially, then slice).

This module holds the layout and the expert;
:class:`~poe_backend.families.framepack.runtime.FramePackRuntime` owns the components
(loading, prompt cache, placement, section experts, decode).

Decisions:

* Gibbs sweeps re-sample chunk ``g`` from FramePack(``g`` | chunks generated before
  ``g``) × Gaussian; FramePack cannot condition on chunks generated later, so a sweep is
  a partial Gibbs step (the Gaussian expert still ties every section to its render).
* Guidance: FramePack is guidance-distilled: ``guidance_scale`` (default 10, as
  FramePack's demo; diffusers' pipeline passes ``guidance·1000``) goes into the model;
  true CFG (``true_cfg_scale`` > 1, two passes) is available but off by default.
* Time shift: FramePack's exponential shift with ``mu`` from the section's token count,
  capped at ``log 7`` (:func:`framepack_levels`).
* The VAE posterior's mode is used everywhere (diffusers samples it for the image latent;
  the mode makes runs reproducible).
* The prompt template follows the tokenizer (:func:`prompt_template`): HunyuanVideo's
  Llama-3 chat template where the tokenizer has its header tokens, the bare prompt
  otherwise (the tiny preset's character tokenizers, :mod:`poe_backend.families.framepack.tiny`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import Tensor

from poe_backend.sampling.experts import GenerativeExpert, particle_batches
from poe_backend.sampling.schedules import flux_shift_mu, shifted_levels

SamplingType = Literal["inverted", "vanilla"]
TEMPORAL_FACTOR = 4
SPATIAL_FACTOR = 8
TIMESTEP_SCALE = 1000.0  # FramePack takes σ·1000 and guidance·1000 (MODELS.md)
HISTORY_SIZES: dict[str, list[int]] = {"inverted": [1, 2, 16], "vanilla": [16, 2, 1]}
#: Llama-3's chat header tokens, which HunyuanVideo's prompt template is written in.
LLAMA3_HEADER_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
BARE_TEMPLATE = {"template": "{}", "crop_start": 0}


def num_pixel_frames(num_sections: int, window: int) -> int:
    """Pixel frames of a video with ``num_sections`` sections of ``window`` latent frames:
    ``1 + 4·C·W``."""
    return 1 + TEMPORAL_FACTOR * num_sections * window


def time_section(generation_index: int, num_sections: int, sampling_type: SamplingType) -> int:
    """Which time section generation step ``generation_index`` makes."""
    return num_sections - 1 - generation_index if sampling_type == "inverted" else generation_index


def framepack_levels(num_levels: int, window: int, latent_height: int, latent_width: int, patch_size: int = 2, t_max: float = 0.98) -> list[float]:
    """FramePack's schedule: a linear grid under the exponential shift with
    ``mu = min(calculate_shift(tokens), log 7)``, tokens = ``W·h·w / patch²``."""
    tokens = window * latent_height * latent_width // (patch_size * patch_size)
    mu = min(flux_shift_mu(tokens), math.log(7.0))
    return shifted_levels(num_levels, mu, t_max=t_max)


#: The :class:`SectionConditioning` fields that hold one row per particle.
PER_PARTICLE = ("latents_clean", "latents_history_2x", "latents_history_4x")


@dataclass
class SectionConditioning:
    """Per-particle inputs of one section's forward (diffusers' names): clean latents
    ``(P, C, 1 + n_1x, h, w)``, 2×/4× history ``(P, C, n, h, w)`` and frame indices."""

    indices_latents: Tensor
    latents_clean: Tensor
    indices_latents_clean: Tensor
    latents_history_2x: Tensor
    indices_latents_history_2x: Tensor
    latents_history_4x: Tensor
    indices_latents_history_4x: Tensor

    @property
    def particles(self) -> int:
        return self.latents_clean.shape[0]

    def reindex(self, indices: Tensor) -> None:
        for name in PER_PARTICLE:
            value = getattr(self, name)
            setattr(self, name, value[indices.to(value.device)])

    def rows(self, rows: slice) -> "SectionConditioning":
        """The conditioning of particles ``rows`` (a micro-batch): per-particle latents sliced
        (views), the frame indices shared."""
        return replace(self, **{name: getattr(self, name)[rows] for name in PER_PARTICLE})


def section_conditioning(
    image_latents: Tensor,
    history: list[Tensor],
    generation_index: int,
    num_sections: int,
    window: int,
    sampling_type: SamplingType,
) -> SectionConditioning:
    """The conditioning of generation step ``generation_index`` as diffusers' FramePack
    pipeline builds it. ``image_latents`` ``(P, C, 1, h, w)``; ``history`` the chunks
    generated before, in generation order, each ``(P, C, W, h, w)``."""
    sizes = HISTORY_SIZES[sampling_type]
    count, channels, _, height, width = image_latents.shape
    zeros = image_latents.new_zeros(count, channels, sum(sizes), height, width)
    if sampling_type == "inverted":
        # Generated sections sit after the current one in time: newest generated first.
        past = torch.cat([*reversed(history), zeros], dim=2)[:, :, : sum(sizes)]
        latents_1x, latents_2x, latents_4x = past.split(sizes, dim=2)
        paddings = list(reversed(range(num_sections)))
        if num_sections > 4:
            paddings = [3] + [2] * (num_sections - 3) + [1, 0]
        padding = paddings[generation_index] * window
        indices = torch.arange(0, 1 + padding + window + sum(sizes))
        prefix, _, current, indices_1x, indices_2x, indices_4x = indices.split([1, padding, window, *sizes])
    else:
        past = torch.cat([zeros, image_latents, *history], dim=2)[:, :, -sum(sizes) :]
        latents_4x, latents_2x, latents_1x = past.split(sizes, dim=2)
        indices = torch.arange(0, 1 + sum(sizes) + window)
        prefix, indices_4x, indices_2x, indices_1x, current = indices.split([1, *sizes, window])
    return SectionConditioning(
        indices_latents=current,
        latents_clean=torch.cat([image_latents, latents_1x], dim=2),
        indices_latents_clean=torch.cat([prefix, indices_1x]),
        latents_history_2x=latents_2x,
        indices_latents_history_2x=indices_2x,
        latents_history_4x=latents_4x,
        indices_latents_history_4x=indices_4x,
    )


@dataclass
class PromptEmbeddings:
    """Llama hidden states ``(1, L, D)``, their mask ``(1, L)``, CLIP-L pooled ``(1, 768)``."""

    embeds: Tensor
    attention_mask: Tensor
    pooled: Tensor


class FramePackSectionExpert(GenerativeExpert):
    """``p(section | history, first frame, prompt)`` for one generation step.

    ``x`` ``(P, C, W, h, w)``. The conditioning holds per-particle history, so
    :meth:`reindex` follows resampling, and a micro-batch of ``max_batch`` particles (None:
    all at once) runs with its rows of it. ``guidance_scale`` is the distilled guidance;
    ``true_cfg_scale`` > 1 adds a negative-prompt pass. ``forward_count`` counts passes over
    all particles."""

    def __init__(
        self,
        transformer: torch.nn.Module,
        conditioning: SectionConditioning,
        prompt: PromptEmbeddings,
        image_embeds: Tensor,
        guidance_scale: float = 10.0,
        negative_prompt: PromptEmbeddings | None = None,
        true_cfg_scale: float = 1.0,
        max_batch: int | None = None,
    ) -> None:
        if true_cfg_scale != 1.0 and negative_prompt is None:
            raise ValueError("true_cfg_scale != 1 needs negative prompt embeddings")
        self.transformer = transformer
        self.conditioning = conditioning
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.image_embeds = image_embeds
        self.guidance_scale = float(guidance_scale)
        self.true_cfg_scale = float(true_cfg_scale)
        self.max_batch = max_batch
        self.forward_count = 0
        transformer.requires_grad_(False)

    def reindex(self, indices: Tensor) -> None:
        self.conditioning.reindex(indices)

    def _forward(self, x: Tensor, t: float, prompt: PromptEmbeddings, cond: SectionConditioning) -> Tensor:
        count, dtype, device = x.shape[0], self.transformer.dtype, x.device

        def batch(tensor: Tensor) -> Tensor:
            return tensor.to(device=device).expand(count, *tensor.shape[1:])

        return self.transformer(
            hidden_states=x.to(dtype),
            timestep=torch.full((count,), t * TIMESTEP_SCALE, device=device),
            encoder_hidden_states=batch(prompt.embeds.to(dtype)),
            encoder_attention_mask=batch(prompt.attention_mask.to(dtype)),
            pooled_projections=batch(prompt.pooled.to(dtype)),
            image_embeds=batch(self.image_embeds.to(dtype)),
            indices_latents=cond.indices_latents,
            guidance=torch.full((count,), self.guidance_scale * TIMESTEP_SCALE, device=device, dtype=dtype),
            latents_clean=cond.latents_clean.to(device, dtype),
            indices_latents_clean=cond.indices_latents_clean,
            latents_history_2x=cond.latents_history_2x.to(device, dtype),
            indices_latents_history_2x=cond.indices_latents_history_2x,
            latents_history_4x=cond.latents_history_4x.to(device, dtype),
            indices_latents_history_4x=cond.indices_latents_history_4x,
            return_dict=False,
        )[0]

    @property
    def passes_per_evaluation(self) -> int:
        return 1 if self.true_cfg_scale == 1.0 else 2

    def velocity(self, x: Tensor, t: float) -> Tensor:
        """``x`` ``(P, C, W, h, w)``, the conditioning's P particles -> velocity of the same
        shape, ``max_batch`` particles (and their conditioning rows) at a time; ValueError
        for another particle count (a micro-batch cut elsewhere would meet the wrong rows)."""
        if x.shape[0] != self.conditioning.particles:
            raise ValueError(f"x has {x.shape[0]} particles, the section conditioning {self.conditioning.particles}")
        self.forward_count += self.passes_per_evaluation
        return torch.cat([self._guided(x[rows], t, self.conditioning.rows(rows)) for rows in particle_batches(x.shape[0], self.max_batch)])

    def _guided(self, x: Tensor, t: float, cond: SectionConditioning) -> Tensor:
        prediction = self._forward(x, t, self.prompt, cond)
        if self.true_cfg_scale != 1.0:
            negative = self._forward(x, t, self.negative_prompt, cond)
            prediction = negative + self.true_cfg_scale * (prediction - negative)
        return prediction.to(x.dtype)


def prompt_template(tokenizer: Any) -> dict[str, Any]:
    """The Llama prompt template for ``tokenizer``: HunyuanVideo's (diffusers'
    ``DEFAULT_PROMPT_TEMPLATE``, its system prompt cropped at token 95) when the tokenizer
    has Llama-3's chat header tokens (:data:`LLAMA3_HEADER_TOKENS`), which the template is
    written in. A tokenizer without them (a test's character-level one) would spell the
    template out piece by piece until the prompt is truncated away, so it gets the bare
    prompt (``"{}"``, nothing cropped)."""
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_framepack import DEFAULT_PROMPT_TEMPLATE

    vocabulary = tokenizer.get_vocab()
    return DEFAULT_PROMPT_TEMPLATE if all(token in vocabulary for token in LLAMA3_HEADER_TOKENS) else BARE_TEMPLATE

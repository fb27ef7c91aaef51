"""The FramePack family for one autoregressive sim-to-video job, owning what a diffusers
pipeline owns.

:class:`FramePackRuntime` holds the components (through the model cache: the HunyuanVideo
VAE kept across jobs; Llama, CLIP-L and SigLIP loaded only to encode, then released), the
prompt embeddings (cached per prompt across jobs: a repeated prompt never loads the ~15 GB
Llama encoder), the latent layout (sections, their time order, the render slices, the
assembled video latent), the placement of the transformer (planned before it loads by
:func:`poe_backend.runtime.job_plan.plan_transformers`, i.e. ``planner.plan``), the
section experts for the autoregressive sampler, and the decode (the plan's settings: free
the transformer first and tile when the decode does not fit beside it; HunyuanVideo's VAE
decodes all frames at once untiled, ~56 GiB for 73 frames at 832×480).

Order of a job: ``FramePackRuntime(...)`` (checks every weight, loads the VAE) →
:meth:`encode_prompts` / :meth:`encode_image` → :meth:`plan` → :meth:`encode_video` and
:meth:`section_expert` per chunk → sampler → :meth:`assemble` → :meth:`decode`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from poe_backend.runtime import planner
from poe_backend.families.framepack.declaration import SHARED, TEXT_ROLES, TRANSFORMER_ROLES
from poe_backend.families.framepack.experts import (
    SPATIAL_FACTOR, FramePackSectionExpert, PromptEmbeddings, SamplingType, framepack_levels, num_pixel_frames,
    prompt_template, section_conditioning, time_section,
)
from poe_backend.models.lookup import check_available
from poe_backend.runtime.planner import Budget
from poe_backend.runtime.cache import MODEL_CACHE
from poe_backend.runtime.family import FamilyRuntime, PromptCache
from poe_backend.runtime.job_plan import JobPlan, decode_videos, job_budget, plan_transformers, set_vae_tiling
from poe_backend.sampling.run import checkpoint

#: Prompt embeddings on the CPU, keyed by (preset, length, dtype, text), oldest dropped first.
_PROMPTS: PromptCache[PromptEmbeddings] = PromptCache(32)


class FramePackRuntime(FamilyRuntime):
    """FramePack for one job: ``num_sections`` sections of ``window`` latent frames at
    ``height`` × ``width`` (multiples of 16), generated in ``sampling_type`` order.
    ``budget``: what ``auto`` plans against (``"detect"``: :func:`planner.device_budget`,
    None off CUDA). Raises ``MissingWeights`` for every absent repo before loading anything."""

    def __init__(self, sampling_type: SamplingType, window: int, num_sections: int, height: int, width: int, *, preset: str = "default",
                 device: str = "cpu", dtype: torch.dtype | None = None, budget: Budget | None | str = "detect", max_sequence_length: int = 256) -> None:
        if height % 16 or width % 16:
            raise ValueError(f"FramePack needs height and width divisible by 16, got {height}x{width}")
        self.sampling_type, self.window, self.num_sections = sampling_type, window, num_sections
        self.height, self.width = height, width
        self.num_frames = num_pixel_frames(num_sections, window)
        super().__init__(preset=preset, device=device, dtype=dtype, budget=budget)
        self.max_sequence_length = max_sequence_length
        self.transformer_role = TRANSFORMER_ROLES[sampling_type]
        check_available(self.roles(sampling_type), preset)
        self.vae = MODEL_CACHE.load("framepack.vae", preset, device=self.device, dtype=torch.float32)

    @staticmethod
    def roles(sampling_type: SamplingType) -> list[str]:
        """Every role a job of ``sampling_type`` uses (the weights manager's lists)."""
        return [TRANSFORMER_ROLES[sampling_type], *SHARED]

    @property
    def chunk_shape(self) -> tuple[int, int, int, int]:
        """One particle's section latent ``(C, W, H/8, W/8)``."""
        return (self.vae.config.latent_channels, self.window, self.height // SPATIAL_FACTOR, self.width // SPATIAL_FACTOR)

    # -- encoders ------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompts(self, texts: list[str]) -> list[PromptEmbeddings]:
        """Llama hidden states (the tokenizer's template, cropped) + CLIP-L pooled per text,
        through the pipeline's ``encode_prompt``. Only texts never encoded before (this
        preset, length and dtype) load the text encoders (on the job's device when they fit
        there after the model cache made room, else on the CPU), released afterwards."""
        return [self._on_device(embedding) for embedding in _PROMPTS.get((self.preset, self.max_sequence_length, str(self.dtype)), texts, self._encode_texts)]

    def _encode_texts(self, texts: list[str]) -> list[PromptEmbeddings]:
        (text_encoder, tokenizer, text_encoder_2, tokenizer_2), encoder_device = MODEL_CACHE.load_encoders(TEXT_ROLES, self.preset, device=self.device, dtype=self.dtype)
        pipeline = self._pipeline(text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)
        template = prompt_template(pipeline.tokenizer)
        embeddings = []
        for text in texts:
            checkpoint()
            embeds, pooled, mask = pipeline.encode_prompt(prompt=text, prompt_template=template, device=torch.device(encoder_device), dtype=self.dtype,
                                                          max_sequence_length=self.max_sequence_length)
            embeddings.append(PromptEmbeddings(embeds.cpu(), mask.cpu(), pooled.cpu()))
        del pipeline, text_encoder, text_encoder_2
        for role in TEXT_ROLES:
            MODEL_CACHE.release(role, self.preset)
        return embeddings

    def _on_device(self, embedding: PromptEmbeddings) -> PromptEmbeddings:
        return PromptEmbeddings(embedding.embeds.to(self.device), embedding.attention_mask.to(self.device), embedding.pooled.to(self.device))

    def _pipeline(self, **components: Any):
        from diffusers import HunyuanVideoFramepackPipeline

        parts = {name: None for name in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "image_encoder", "feature_extractor")}
        return HunyuanVideoFramepackPipeline(transformer=None, vae=self.vae, scheduler=None, **{**parts, **components})

    @torch.no_grad()
    def encode_image(self, image: Tensor) -> Tensor:
        """SigLIP ``last_hidden_state`` of ``image`` ``(3, H, W)`` in [0, 1]; the encoder is
        released afterwards."""
        (encoder, feature_extractor), encoder_device = MODEL_CACHE.load_encoders(["framepack.image_encoder", "framepack.feature_extractor"], self.preset, device=self.device, dtype=self.dtype)
        pipeline = self._pipeline(image_encoder=encoder, feature_extractor=feature_extractor)
        embeds = pipeline.encode_image(image[None].to(encoder_device) * 2 - 1, device=torch.device(encoder_device), dtype=self.dtype).to(self.device)
        del pipeline, encoder
        MODEL_CACHE.release("framepack.image_encoder", self.preset)
        return embeds

    @torch.no_grad()
    def encode_video(self, video: Tensor) -> Tensor:
        """Pixel video ``(B, 3, F, H, W)`` in [-1, 1] -> scaled latents
        ``(B, C, (F-1)/4 + 1, H/8, W/8)`` (posterior mode), float32."""
        latents = self.vae.encode(video.to(self.device, self.vae.dtype)).latent_dist.mode()
        return latents.float() * self.vae.config.scaling_factor

    # -- placement and experts -----------------------------------------------------------

    def plan(self, *, offload: str = "auto", fp8_storage: bool = False, particles: int = 1, max_batch: int | None = None) -> JobPlan:
        """Decide the transformer's placement, the particles per section forward and the
        decode before it loads: :func:`planner.framepack_job_bytes` from the installed config
        (one particle's section forward) against :attr:`budget`, for ``particles``;
        ``max_batch`` fixes the particles per forward. Raises :class:`planner.PlanError` (a
        MemoryError) when nothing fits."""
        config = planner.installed_config(self.transformer_role, self.preset)
        activation, decode, tiled = planner.framepack_job_bytes(config, self.window, self.num_sections, self.height, self.width)
        self.job_plan = plan_transformers([self.transformer_role], self.preset, self.device, offload=offload, fp8_storage=fp8_storage, particle_bytes=activation,
                                          decode_bytes=decode, tiled_decode_bytes=tiled, budget=job_budget(self.budget, self.device), alternating=False,
                                          particles=particles, max_batch=max_batch)
        set_vae_tiling(self.vae, self.job_plan.decode.tiled or self.job_plan.decode.free_transformers)
        return self.job_plan

    @property
    def transformer(self) -> torch.nn.Module:
        """The transformer, loaded once per process and placed as planned."""
        return self.planned_transformer(self.transformer_role)

    def levels(self, num_levels: int, t_max: float) -> list[float]:
        """FramePack's shifted schedule for this section size (:func:`framepack_levels`)."""
        patch = planner.installed_config(self.transformer_role, self.preset).get("patch_size", 2)
        return framepack_levels(num_levels, self.window, self.height // SPATIAL_FACTOR, self.width // SPATIAL_FACTOR, patch_size=patch, t_max=t_max)

    def section_expert(self, generation_index: int, history: list[Tensor], image_latents: Tensor, prompt: PromptEmbeddings, image_embeds: Tensor,
                       guidance_scale: float, negative: PromptEmbeddings | None = None, true_cfg_scale: float = 1.0) -> FramePackSectionExpert:
        """FramePack for generation step ``generation_index`` given the chunks generated
        before it (``history``, each ``(P, C, W, h, w)``) and the first frame's latent
        ``(P, C, 1, h, w)``, running the plan's :attr:`micro_batch` particles per forward."""
        conditioning = section_conditioning(image_latents, history, generation_index, self.num_sections, self.window, self.sampling_type)
        return FramePackSectionExpert(self.transformer, conditioning, prompt, image_embeds, guidance_scale, negative, true_cfg_scale, max_batch=self.micro_batch)

    def render_section(self, render_latents: Tensor, generation_index: int) -> Tensor:
        """The slice ``(C, W, h, w)`` of the encoded render clip ``(C, 1 + S·W, h, w)`` that
        generation step ``generation_index`` makes (its time section)."""
        section = time_section(generation_index, self.num_sections, self.sampling_type)
        return render_latents[:, 1 + section * self.window : 1 + (section + 1) * self.window]

    def assemble(self, image_latents: Tensor, chunks: list[Tensor]) -> Tensor:
        """The video latent ``(P, C, 1 + S·W, h, w)`` in time order from the first frame's
        latent ``(P, C, 1, h, w)`` and the chunks in generation order."""
        in_time_order: list[Tensor] = [None] * self.num_sections  # type: ignore[list-item]
        for index, chunk in enumerate(chunks):
            in_time_order[time_section(index, self.num_sections, self.sampling_type)] = chunk
        return torch.cat([image_latents.to(in_time_order[0].device), *in_time_order], dim=2)

    # -- outputs -------------------------------------------------------------------------

    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents ``(B, C, F', h, w)`` -> videos ``(B, 4(F'-1)+1, 3, H, W)`` in [0, 1]
        (float32, CPU), one at a time, with the plan's decode settings (transformer
        released first, tiling)."""
        return decode_videos(self.vae, latents, self.job_plan, self.free_transformers, lambda latent: (latent.float() / self.vae.config.scaling_factor).to(self.device, self.vae.dtype))

"""The Wan2.1 family for one sim-to-video job, owning what a diffusers pipeline owns.

:class:`WanRuntime` holds the components (through the model cache: the VAE and tokenizer
kept across jobs, UMT5 and CLIP loaded only to encode and then released), the prompt
embeddings (cached per prompt across jobs), the conditions (I2V first-frame latents, VACE
control contexts, VAE encodes), the placement of the transformers (planned before they load
by :func:`poe_backend.runtime.job_plan.plan_transformers`, i.e. ``planner.plan``),
the experts for the sampler, and the decode (the plan's decode settings: VAE tiling, and
freeing the transformers first when the decode does not fit beside them).

Order of a job: ``WanRuntime(kinds, F, H, W)`` (checks every weight is present, loads VAE and
tokenizer) → :meth:`encode_prompts` / :meth:`encode_image` (encoders load, run, go) →
:meth:`plan` → conditions and experts (the transformers load and are placed here) →
sampler → :meth:`decode`. The task drops its experts before decoding, so a planned free
really returns the memory.

The diffusers pipelines' own helpers build the conditions (I2V ``prepare_latents``, VACE
``prepare_video_latents`` and ``prepare_masks``): pipeline objects are built around the
loaded components only to call them, never their ``__call__`` (our samplers replace the
scheduler loop). VAE encodes beside resident transformers run tiled whenever the planned
decode does not fit beside them untiled (encode and decode peak alike).
"""

from __future__ import annotations

from typing import Collection, Literal

import torch
from torch import Tensor

from poe_backend.runtime import planner
from poe_backend.models.lookup import check_available
from poe_backend.runtime.planner import Budget
from poe_backend.runtime.cache import MODEL_CACHE
from poe_backend.runtime.family import FamilyRuntime, PromptCache
from poe_backend.runtime.job_plan import JobPlan, decode_videos, job_budget, plan_transformers, set_vae_tiling
from poe_backend.sampling.run import checkpoint
from poe_backend.families.wan.declaration import I2V, SHARED, TRANSFORMER_ROLES
from poe_backend.families.wan.experts import LATENT_CHANNELS, WanI2VExpert, WanVACEExpert, _clean_prompt, _space_to_depth, latent_shape

#: The CLIP image encoder's dtype (the reference loads it in fp32).
IMAGE_ENCODER_DTYPE = torch.float32
#: UMT5 embeddings ``(1, L, D)`` on the CPU, keyed by (preset, length, dtype, text), oldest
#: dropped first (4 MiB each at full size).
_PROMPTS: PromptCache[Tensor] = PromptCache(32)


class WanRuntime(FamilyRuntime):
    """The Wan components for one job of ``num_frames`` × ``height`` × ``width`` pixels
    (``F = 4k + 1``, sides multiples of 16) with the ``kinds`` transformers (``"vace"``,
    ``"i2v"``). ``budget``: what ``auto`` plans against; ``"detect"`` asks
    :func:`planner.device_budget` (None off CUDA: everything stays resident in host
    memory). Raises ``MissingWeights`` naming every absent repo before loading anything."""

    def __init__(self, kinds: list[str], num_frames: int, height: int, width: int, *, preset: str = "default", device: str = "cpu",
                 dtype: torch.dtype | None = None, budget: Budget | None | str = "detect", max_sequence_length: int = 512) -> None:
        unknown = [kind for kind in kinds if kind not in TRANSFORMER_ROLES]
        if not kinds or unknown:
            raise ValueError(f"Wan transformers: choose from {', '.join(TRANSFORMER_ROLES)}, got {kinds}")
        self.kinds = list(dict.fromkeys(kinds))
        self.event_shape = latent_shape(num_frames, height, width)
        self.num_frames, self.height, self.width = num_frames, height, width
        super().__init__(preset=preset, device=device, dtype=dtype, budget=budget)
        self.max_sequence_length = max_sequence_length
        check_available(self.roles(self.kinds), preset)
        self.vae = MODEL_CACHE.load("wan.vae", preset, device=self.device, dtype=torch.float32)  # fp32, as Wan recommends
        self.tokenizer = MODEL_CACHE.load("wan.tokenizer", preset)

    @staticmethod
    def roles(kinds: list[str]) -> list[str]:
        """Every role a job with the ``kinds`` transformers uses (the family declaration's
        groups, which the weights manager reads too)."""
        return [*SHARED, *([TRANSFORMER_ROLES["vace"]] if "vace" in kinds else []), *(I2V if "i2v" in kinds else [])]

    # -- encoders ------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompts(self, texts: list[str]) -> list[Tensor]:
        """UMT5 embeddings ``(1, max_sequence_length, D)`` per text, zero past the tokens
        (diffusers' ``WanPipeline._get_t5_prompt_embeds``, written out because its
        ``prompt_clean`` needs ``ftfy``, which this environment lacks; with ftfy installed
        the text is cleaned the same way). Only texts never encoded before (this preset,
        length and dtype) load UMT5-XXL (~11 GB: on the job's device when it fits there after the
        model cache made room, else on the CPU), which is released afterwards."""
        return [embedding.to(self.device, self.dtype) for embedding in _PROMPTS.get((self.preset, self.max_sequence_length, str(self.dtype)), texts, self._encode_texts)]

    def _encode_texts(self, texts: list[str]) -> list[Tensor]:
        (encoder,), _ = MODEL_CACHE.load_encoders(["wan.text_encoder"], self.preset, device=self.device, dtype=self.dtype)
        embeddings = []
        for text in texts:
            checkpoint()
            embeddings.append(self._t5_embeds(encoder, text).cpu())
        del encoder
        MODEL_CACHE.release("wan.text_encoder", self.preset)
        return embeddings

    def _t5_embeds(self, encoder: torch.nn.Module, text: str) -> Tensor:
        tokens = self.tokenizer(
            [_clean_prompt(text)], padding="max_length", max_length=self.max_sequence_length, truncation=True,
            add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )
        device = next(encoder.parameters()).device
        hidden = encoder(tokens.input_ids.to(device), tokens.attention_mask.to(device)).last_hidden_state
        length = int(tokens.attention_mask.sum())
        embeds = torch.zeros_like(hidden)
        embeds[:, :length] = hidden[:, :length]
        return embeds.to(self.dtype)

    @torch.no_grad()
    def encode_image(self, image: Tensor) -> Tensor:
        """CLIP ViT-H ``hidden_states[-2]`` of an image ``(3, H, W)`` in [0, 1]
        (``(1, 257, 1280)`` for the real encoder), in the transformers' dtype. The encoder
        loads and runs in fp32, as the reference does (diffusers' Wan I2V example:
        ``CLIPVisionModel.from_pretrained(..., torch_dtype=torch.float32)``; the pipeline casts
        the embeddings to the transformer's dtype), so the cache's room check counts 4 bytes
        per parameter; it runs on the job's device when it fits there (else on the CPU) and
        is released afterwards."""
        if "i2v" not in self.kinds:
            raise RuntimeError("the CLIP image encoder belongs to the I2V model, which this job does not use")
        (processor, encoder), encoder_device = MODEL_CACHE.load_encoders(["wan.image_processor", "wan.image_encoder"], self.preset, device=self.device, dtype=IMAGE_ENCODER_DTYPE)
        pixels = processor(images=image.float().clamp(0, 1), do_rescale=False, return_tensors="pt").to(encoder_device)
        embeds = encoder(**pixels, output_hidden_states=True).hidden_states[-2].to(self.device, self.dtype)
        del encoder
        MODEL_CACHE.release("wan.image_encoder", self.preset)
        return embeds

    # -- placement -----------------------------------------------------------------------

    def plan(self, *, offload: str = "auto", fp8_storage: bool = False, particles: int = 1, max_batch: int | None = None, conditioned: Collection[str] = ()) -> JobPlan:
        """Decide placements, particles per forward and decode for this job of ``particles``
        before the transformers load: :func:`planner.wan_job_bytes` from the installed
        configs (one particle's largest pass: a forward, CFG passes one after the other, or
        for the ``conditioned`` kinds, whose experts are conditioned children and then stay
        resident, an aligned pass through both CFG passes) against :attr:`budget`;
        ``max_batch`` fixes the particles per forward. Raises :class:`planner.PlanError` (a
        MemoryError) when nothing fits."""
        unknown = [kind for kind in conditioned if kind not in self.kinds]
        if unknown:
            raise ValueError(f"conditioned: {unknown} are not among this job's transformers {self.kinds}")
        roles = [TRANSFORMER_ROLES[kind] for kind in self.kinds]
        child_roles = [TRANSFORMER_ROLES[kind] for kind in conditioned]
        configs = {role: planner.installed_config(role, self.preset) for role in roles}
        activation, decode, tiled = planner.wan_job_bytes(configs, self.num_frames, self.height, self.width, child_roles)
        self.job_plan = plan_transformers(roles, self.preset, self.device, offload=offload, fp8_storage=fp8_storage, particle_bytes=activation, decode_bytes=decode,
                                          tiled_decode_bytes=tiled, budget=job_budget(self.budget, self.device), alternating=len(roles) > 1, particles=particles,
                                          max_batch=max_batch, conditioned=child_roles)
        set_vae_tiling(self.vae, self.job_plan.decode.tiled or self.job_plan.decode.free_transformers)
        return self.job_plan

    def transformer(self, kind: str) -> torch.nn.Module:
        """The ``kind`` transformer, loaded once per process and placed as planned."""
        if kind not in self.kinds:
            raise RuntimeError(f"this job's Wan runtime has no {kind!r} transformer (kinds {self.kinds})")
        return self.planned_transformer(TRANSFORMER_ROLES[kind])

    # -- conditions ----------------------------------------------------------------------

    def _normalisation(self) -> tuple[Tensor, Tensor]:
        shape = (1, self.vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(self.vae.config.latents_mean, dtype=torch.float32).view(shape)
        std = torch.tensor(self.vae.config.latents_std, dtype=torch.float32).view(shape)
        return mean.to(self.device), std.to(self.device)

    @torch.no_grad()
    def encode_video(self, video: Tensor) -> Tensor:
        """Pixel video ``(B, 3, F, H, W)`` in [-1, 1] -> normalised latents
        ``(B, 16, F', H/8, W/8)`` (posterior mode, so deterministic), float32."""
        latents = self.vae.encode(video.to(self.device, self.vae.dtype)).latent_dist.mode().float()
        mean, std = self._normalisation()
        return (latents - mean) / std

    @torch.no_grad()
    def i2v_condition(self, image: Tensor) -> Tensor:
        """The I2V transformer's extra 20 channels for first frame ``image`` ``(3, H, W)``
        in [0, 1]: 4-channel frame-0 mask + latents of ``[image, zeros…]``,
        ``(1, 20, F', H/8, W/8)`` (diffusers' ``WanImageToVideoPipeline.prepare_latents``)."""
        from diffusers import WanImageToVideoPipeline

        pipeline = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=self.vae, scheduler=None)
        placeholder = torch.zeros((1, *self.event_shape), device=self.device)
        _, condition = pipeline.prepare_latents(
            image[None].to(self.device) * 2 - 1, 1, LATENT_CHANNELS, self.height, self.width, self.num_frames,
            dtype=torch.float32, device=torch.device(self.device), latents=placeholder,
        )
        return condition

    @torch.no_grad()
    def vace_control(self, video: Tensor, mask: Tensor, latent_mask: Literal["resize", "exact"] = "resize") -> Tensor:
        """VACE control context ``(1, 96, F', h, w)`` from a pixel ``video`` ``(F, 3, H, W)``
        in [0, 1] and ``mask`` ``(F, H, W)`` in {0, 1} (1 = generate, 0 = keep), e.g. from
        :func:`poe_backend.families.wan.experts.depth_control_inputs`; the pipeline's
        ``prepare_video_latents`` + ``prepare_masks``. ``latent_mask="exact"`` re-derives
        latent frame 0's mask from pixel frame 0 alone (see :mod:`poe_backend.families.wan.experts`)."""
        from diffusers import WanVACEPipeline

        pipeline = WanVACEPipeline(tokenizer=None, text_encoder=None, vae=self.vae, scheduler=None, transformer=self.transformer("vace"))
        pixels = (video.permute(1, 0, 2, 3)[None].float() * 2 - 1).to(self.device)
        mask_video = mask[None, None].float().expand(1, 3, *mask.shape).to(self.device)
        latents = pipeline.prepare_video_latents(pixels, mask_video, [[]], None, torch.device(self.device))
        latent_masks = pipeline.prepare_masks(mask_video, [[]], None)
        if latent_mask == "exact":
            latent_masks[:, :, 0] = _space_to_depth(mask[0].float().to(latent_masks.device))
        return torch.cat([latents.float().to(self.device), latent_masks.float().to(self.device)], dim=1)

    # -- experts -------------------------------------------------------------------------

    def i2v_expert(self, condition: Tensor, image_embeds: Tensor, prompt: Tensor, negative: Tensor | None, guidance: float) -> WanI2VExpert:
        """Wan2.1-I2V on :meth:`i2v_condition` and :meth:`encode_image` outputs, running the
        plan's :attr:`micro_batch` particles per forward."""
        return WanI2VExpert(self.transformer("i2v"), condition, image_embeds, prompt, negative, guidance, max_batch=self.micro_batch)

    def vace_expert(self, control: Tensor, prompt: Tensor, negative: Tensor | None, guidance: float, control_scale: float = 1.0) -> WanVACEExpert:
        """Wan2.1 VACE on a :meth:`vace_control` context, running the plan's :attr:`micro_batch`
        particles per forward."""
        return WanVACEExpert(self.transformer("vace"), control, prompt, negative, guidance, control_scale, max_batch=self.micro_batch)

    # -- outputs -------------------------------------------------------------------------

    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents ``(B, 16, F', h, w)`` -> videos ``(B, F, 3, H, W)`` in [0, 1]
        (float32, CPU), one at a time, with the plan's decode settings: the transformers
        are released first when it says so (the next job reloads them), tiled when it says
        so."""
        mean, std = self._normalisation()
        return decode_videos(self.vae, latents, self.job_plan, self.free_transformers, lambda latent: (latent.float().to(self.device) * std + mean).to(self.vae.dtype))

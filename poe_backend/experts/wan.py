"""Wan2.1 video experts on one shared latent: image-to-video and VACE depth-to-video.

Latent space (MODELS.md "Wan2.1 family"): ``AutoencoderKLWan`` (the same VAE for every
Wan2.1 model) maps a clip of ``F = 4k + 1`` frames at ``H × W`` (multiples of 16) to
``(16, (F - 1)/4 + 1, H/8, W/8)``, normalised per channel as ``(z - latents_mean) /
latents_std``. Every expert here is a velocity field on a batch of such latents,
``x`` of shape ``(P, 16, F', H/8, W/8)``; the transformers take the raw ``σ·1000`` as
timestep (σ is our ``t``) and predict ``eps - x0``, our velocity.

Experts:

* :class:`WanI2VExpert` — Wan2.1-I2V-14B: transformer input is 36 channels (16 latents +
  4-channel frame-0 mask + 16 latents of ``[image, zeros…]``), CLIP ViT-H
  ``hidden_states[-2]`` as image tokens, true classifier-free guidance (two forwards per
  velocity when ``guidance_scale != 1``).
* :class:`WanVACEExpert` — Wan2.1 VACE: 16 input channels and a 96-channel control context
  (inactive/reactive latents + 8×8 space-to-depth mask) scaled by
  ``control_scale`` at every VACE layer. Controls built by :func:`vace_depth_control` (the
  depth video, all-white mask: depth-to-video) and :func:`vace_first_frame_control`
  (first frame kept, the rest generated: image-to-video). Two :class:`WanVACEExpert` on one
  transformer give the "shared" mode: both experts of sim-to-video from one model, half the
  memory of two 14B models (DESIGN.md section 3).

Decisions:

* The diffusers pipelines' own helpers do the conditioning (``encode_image``, I2V
  ``prepare_latents``, VACE ``prepare_video_latents`` and
  ``prepare_masks``): pipeline objects are built around the loaded components only to call
  them, never their ``__call__`` (our samplers replace the scheduler loop).
* VACE's mask resize (``nearest-exact`` from F frames to ``ceil(F/4)`` latent frames)
  samples pixel frame ``4i + 1`` for latent frame ``i``, so a mask that keeps only frame 0
  marks latent frame 0 "generate" (MODELS.md's flag). VACE was trained through the same
  resize (its preprocessing is identical), so ``latent_mask="resize"`` (the default) keeps
  it; ``latent_mask="exact"`` overrides latent frame 0 to "keep" (the causal VAE encodes
  pixel frame 0 alone into latent frame 0, so this is the geometrically exact mask).
  Untested against real weights either way.
* VACE ``reference_images`` are never used: they prepend latent frames, and experts in one
  product must share ``x``.
* Wan2.1-Fun Control has no diffusers class (its checkpoints use VideoX-Fun's layout:
  48 input channels = latents + control latents + reference); it is listed in
  :data:`WAN_MODELS` for completeness and :func:`load_wan` refuses it with that reason.
* Models come from the registry (roles ``wan.*`` in :mod:`poe_backend.experts.wan_models`).
  Tests use its ``tiny`` preset (:mod:`poe_backend.experts.wan_tiny`): every class at minimal size
  (1-layer transformers, 3-channel-base VAE, 1-layer UMT5 with a character-level tokenizer
  built in code, 2-layer CLIP vision), saved with ``save_pretrained`` and loaded back
  through :func:`load_wan`, the path real weights take; the real encoders run too.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Literal, Mapping

import torch
from torch import Tensor

from poe_backend.experts import registry
from poe_backend.sampling.experts import GenerativeExpert

LATENT_CHANNELS = 16
TEMPORAL_FACTOR = 4
SPATIAL_FACTOR = 8
TIMESTEP_SCALE = 1000.0  # Wan transformers take σ·1000 (MODELS.md)

#: Models the paper names that diffusers cannot load, with the reason (see module notes).
UNSUPPORTED_MODELS: dict[str, str] = {
    "alibaba-pai/Wan2.1-Fun-14B-Control": "VideoX-Fun checkpoint layout (48 input channels); no diffusers class in 0.42",
    "alibaba-pai/Wan2.1-Fun-1.3B-Control": "VideoX-Fun checkpoint layout (48 input channels); no diffusers class in 0.42",
}

#: How the two sim-to-video experts are made: ``i2v_vace`` is the paper's pairing (Wan2.1
#: I2V-14B × VACE depth), ``shared_vace`` runs both on one VACE transformer.
Pairing = Literal["i2v_vace", "shared_vace"]


def default_pairing(preset: str) -> Pairing:
    """``shared_vace`` for ``preview`` (no 1.3B I2V exists), else the paper's pairing."""
    return "shared_vace" if preset == "preview" else "i2v_vace"


def check_video_size(num_frames: int, height: int, width: int) -> None:
    """``F = 4k + 1`` and ``H, W`` multiples of 16 (VAE ×8, patch ×2); raises ValueError."""
    if num_frames < 1 or (num_frames - 1) % TEMPORAL_FACTOR:
        raise ValueError(f"Wan needs 4k+1 frames (1, 5, 9, …, 81), got {num_frames}")
    if height % 16 or width % 16:
        raise ValueError(f"Wan needs height and width divisible by 16, got {height}x{width}")


def latent_shape(num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """One particle's latent shape ``(16, (F-1)/4 + 1, H/8, W/8)``."""
    check_video_size(num_frames, height, width)
    return (LATENT_CHANNELS, (num_frames - 1) // TEMPORAL_FACTOR + 1, height // SPATIAL_FACTOR, width // SPATIAL_FACTOR)


def activation_bytes(transformer_config: Mapping, latent_frames: int, latent_height: int, latent_width: int, batch: int, bytes_per_element: int = 2) -> int:
    """Peak activation bytes of one batched transformer forward (an estimate, to be replaced
    by the memory planner's ``wan_activation_bytes``). Tokens ``N = F'·(h/2)·(w/2)`` per
    sample; per block a sample holds the residual stream, fp32 norm output (2 elements per
    token and channel), q, k, v and the attention output (memory-efficient SDPA: no N²
    matrix) and the FFN hidden: ``N·(7·D + ffn_dim)`` elements; VACE keeps one hint
    ``N·D`` per VACE layer for the whole forward. CFG runs its passes one after the other,
    so ``batch`` is the particle count. 14B at 832×480×81, P=2: N = 32,760,
    ~6.1 GiB (I2V), ~11.1 GiB (VACE, 8 hints)."""
    patch_frames, patch_height, patch_width = transformer_config["patch_size"]
    tokens = (latent_frames // patch_frames) * (latent_height // patch_height) * (latent_width // patch_width)
    width = transformer_config["num_attention_heads"] * transformer_config["attention_head_dim"]
    per_token = 7 * width + transformer_config["ffn_dim"] + len(transformer_config.get("vace_layers") or ()) * width
    return batch * tokens * per_token * bytes_per_element


# ----------------------------------------------------------------------------- components

#: UMT5 embeddings on the CPU by ``(preset, text, max_sequence_length)``, oldest dropped first.
_PROMPT_CACHE: dict[tuple[str, str, int], Tensor] = {}
PROMPT_CACHE_SIZE = 32


@dataclass
class WanComponents:
    """Loaded Wan components; shared ones (VAE, UMT5) are loaded once for all experts.
    Text and image encoders are dropped by :meth:`free_encoders` after encoding."""

    vae: torch.nn.Module
    tokenizer: object | None
    text_encoder: torch.nn.Module | None
    device: torch.device
    dtype: torch.dtype
    i2v_transformer: torch.nn.Module | None = None
    vace_transformer: torch.nn.Module | None = None
    image_encoder: torch.nn.Module | None = None
    image_processor: object | None = None
    placement: registry.Placement | None = None
    offload: str = "auto"
    preset: str = "default"
    sources: dict[str, dict] = field(default_factory=dict)

    def place_transformers(self, num_particles: int, latent: tuple[int, int, int, int]) -> registry.Placement:
        """Put the loaded transformers on the device by :attr:`offload` (once). ``auto``
        counts every transformer's weights plus the largest :func:`activation_bytes` of a
        forward on ``num_particles`` latents of shape ``latent`` (finding 5 of issue 9:
        weights alone under-count a 480p 81-frame run by ~10 GiB)."""
        if self.placement is None:
            transformers = [module for module in (self.vace_transformer, self.i2v_transformer) if module is not None]
            activations = max(activation_bytes(module.config, *latent[1:], num_particles) for module in transformers)
            self.placement = registry.Placement.for_modules(self.offload, str(self.device), transformers, activation_bytes=activations)
            for transformer in transformers:
                self.placement.place(transformer)
        return self.placement

    def make_room_for_decode(self) -> None:
        """Before the VAE decodes: send resident transformers to the CPU (once per job, never
        per evaluation) so the decode does not run beside ~2×28 GiB of idle weights. The VAE
        decodes with diffusers' spatial tiling (enabled at load), so its peak is per tile."""
        if self.placement is None or self.placement.preset != "none":
            return  # group/sequential keep weights on the CPU already; model offload holds one
        for module in (self.vace_transformer, self.i2v_transformer):
            if module is not None:
                module.to("cpu")

    def free_encoders(self) -> None:
        """Release UMT5 and CLIP (they are needed once per run)."""
        self.text_encoder = self.image_encoder = None
        for role in ("wan.text_encoder", "wan.image_encoder"):
            if role in self.sources:
                registry.release(role, self.preset)
        gc.collect()

    def _i2v_pipeline(self):
        from diffusers import WanImageToVideoPipeline

        return WanImageToVideoPipeline(
            tokenizer=self.tokenizer, text_encoder=self.text_encoder, vae=self.vae, scheduler=None,
            image_processor=self.image_processor, image_encoder=self.image_encoder, transformer=self.i2v_transformer,
        )

    def _vace_pipeline(self):
        from diffusers import WanVACEPipeline

        return WanVACEPipeline(tokenizer=self.tokenizer, text_encoder=self.text_encoder, vae=self.vae, scheduler=None, transformer=self.vace_transformer)

    # -- encoders ------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(self, prompt: str, negative_prompt: str = "", max_sequence_length: int = 512) -> tuple[Tensor, Tensor]:
        """UMT5 embeddings ``(1, max_sequence_length, D)`` of the prompt and the negative
        prompt, zero past the tokens (as diffusers' ``WanPipeline._get_t5_prompt_embeds``,
        written out because its ``prompt_clean`` needs ``ftfy``, which this environment
        lacks; with ftfy installed the text is cleaned the same way). Cached per
        ``(preset, text, length)`` for the life of the process (:data:`PROMPT_CACHE_SIZE`
        entries, 4 MiB each at full size), so a job whose prompts are cached never loads
        UMT5-XXL (~11 GB); on a miss UMT5 is loaded and :meth:`free_encoders` drops it."""
        return tuple(self._cached_embeds(text, max_sequence_length) for text in (prompt, negative_prompt))

    def _cached_embeds(self, text: str, max_sequence_length: int) -> Tensor:
        key = (self.preset, text, max_sequence_length)
        if key not in _PROMPT_CACHE:
            if self.text_encoder is None:
                self.text_encoder = registry.load("wan.text_encoder", self.preset, device=str(self.device), dtype=self.dtype)
            _PROMPT_CACHE[key] = self._t5_embeds(text, max_sequence_length).cpu()
            while len(_PROMPT_CACHE) > PROMPT_CACHE_SIZE:
                del _PROMPT_CACHE[next(iter(_PROMPT_CACHE))]
        return _PROMPT_CACHE[key].to(self.device, self.dtype)

    def _t5_embeds(self, text: str, max_sequence_length: int) -> Tensor:
        tokens = self.tokenizer(
            [_clean_prompt(text)], padding="max_length", max_length=max_sequence_length, truncation=True,
            add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )
        encoder_device = next(self.text_encoder.parameters()).device
        hidden = self.text_encoder(tokens.input_ids.to(encoder_device), tokens.attention_mask.to(encoder_device)).last_hidden_state
        length = int(tokens.attention_mask.sum())
        embeds = torch.zeros_like(hidden)
        embeds[:, :length] = hidden[:, :length]
        return embeds.to(self.device, self.dtype)

    @torch.no_grad()
    def encode_image(self, image: Tensor) -> Tensor:
        """CLIP ViT-H ``hidden_states[-2]`` of an image ``(3, H, W)`` in [0, 1]:
        ``(1, 257, 1280)`` for the real encoder."""
        if self.image_encoder is None:
            raise RuntimeError("no CLIP image encoder loaded (only the I2V model has one), or it was freed")
        pixels = self.image_processor(images=image.float().clamp(0, 1), do_rescale=False, return_tensors="pt")
        pixels = pixels.to(next(self.image_encoder.parameters()).device)
        return self.image_encoder(**pixels, output_hidden_states=True).hidden_states[-2].to(self.device, self.dtype)

    # -- VAE -----------------------------------------------------------------------------

    def _normalisation(self) -> tuple[Tensor, Tensor]:
        shape = (1, self.vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(self.vae.config.latents_mean, dtype=torch.float32).view(shape)
        std = torch.tensor(self.vae.config.latents_std, dtype=torch.float32).view(shape)
        return mean.to(self.device), std.to(self.device)

    @torch.no_grad()
    def encode_video(self, video: Tensor) -> Tensor:
        """Pixel video ``(B, 3, F, H, W)`` in [-1, 1] -> normalised latents
        ``(B, 16, F', H/8, W/8)`` (posterior mode, so deterministic)."""
        vae_device = next(self.vae.parameters()).device
        latents = self.vae.encode(video.to(vae_device, self.vae.dtype)).latent_dist.mode().float().to(self.device)
        mean, std = self._normalisation()
        return (latents - mean) / std

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> Tensor:
        """Normalised latents ``(B, 16, F', h, w)`` -> video ``(B, 3, F, H, W)`` in [-1, 1]."""
        mean, std = self._normalisation()
        vae_device = next(self.vae.parameters()).device
        raw = (latents.float().to(self.device) * std + mean).to(vae_device, self.vae.dtype)
        return self.vae.decode(raw, return_dict=False)[0].float().clamp(-1, 1)

    # -- conditioning --------------------------------------------------------------------

    @torch.no_grad()
    def i2v_condition(self, image: Tensor, num_frames: int) -> Tensor:
        """The I2V transformer's extra 20 channels for first frame ``image`` ``(3, H, W)``
        in [0, 1]: 4-channel frame-0 mask + latents of ``[image, zeros…]``,
        ``(1, 20, F', H/8, W/8)`` (diffusers' ``WanImageToVideoPipeline.prepare_latents``)."""
        _, height, width = image.shape
        shape = latent_shape(num_frames, height, width)
        pipeline = self._i2v_pipeline()
        placeholder = torch.zeros((1, *shape), device=self.device)
        _, condition = pipeline.prepare_latents(
            image[None].to(self.device) * 2 - 1, 1, LATENT_CHANNELS, height, width, num_frames,
            dtype=torch.float32, device=self.device, latents=placeholder,
        )
        return condition

    @torch.no_grad()
    def vace_control(self, video: Tensor, mask: Tensor, latent_mask: Literal["resize", "exact"] = "resize") -> Tensor:
        """VACE control context ``(1, 96, F', h, w)`` from a pixel ``video`` ``(F, 3, H, W)``
        in [0, 1] and ``mask`` ``(F, H, W)`` in {0, 1} (1 = generate, 0 = keep); the
        pipeline's ``prepare_video_latents`` + ``prepare_masks``. ``latent_mask="exact"``
        re-derives latent frame 0's mask from pixel frame 0 alone (see module notes)."""
        if self.vace_transformer is None:
            raise RuntimeError("no VACE transformer loaded")
        pipeline = self._vace_pipeline()
        pixels = (video.permute(1, 0, 2, 3)[None].float() * 2 - 1).to(self.device)
        mask_video = mask[None, None].float().expand(1, 3, *mask.shape).to(self.device)
        latents = pipeline.prepare_video_latents(pixels, mask_video, [[]], None, self.device)
        latent_masks = pipeline.prepare_masks(mask_video, [[]], None)
        if latent_mask == "exact":
            latent_masks[:, :, 0] = _space_to_depth(mask[0].float().to(latent_masks.device))
        return torch.cat([latents.float().to(self.device), latent_masks.float().to(self.device)], dim=1)


def _clean_prompt(text: str) -> str:
    """diffusers' Wan ``prompt_clean``: ftfy (when installed), HTML unescape, whitespace."""
    import html
    import re

    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()


def _space_to_depth(mask: Tensor) -> Tensor:
    """``(H, W)`` -> ``(64, H/8, W/8)`` as VACE lays out its mask channels."""
    height, width = mask.shape
    blocks = mask.view(height // SPATIAL_FACTOR, SPATIAL_FACTOR, width // SPATIAL_FACTOR, SPATIAL_FACTOR)
    return blocks.permute(1, 3, 0, 2).reshape(SPATIAL_FACTOR * SPATIAL_FACTOR, height // SPATIAL_FACTOR, width // SPATIAL_FACTOR)


def vace_depth_control(components: WanComponents, depth_video: Tensor, **options) -> Tensor:
    """Depth-to-video control: the depth video ``(F, 3, H, W)`` in [0, 1] (near = white),
    every frame generated (all-white mask)."""
    frames, _, height, width = depth_video.shape
    return components.vace_control(depth_video, torch.ones(frames, height, width), **options)


def vace_first_frame_control(components: WanComponents, image: Tensor, num_frames: int, **options) -> Tensor:
    """Image-to-video control: ``[image, gray…]`` (gray = 0 in [-1, 1]) with frame 0 kept
    and the rest generated. ``image`` ``(3, H, W)`` in [0, 1]."""
    _, height, width = image.shape
    video = torch.full((num_frames, 3, height, width), 0.5)
    video[0] = image
    mask = torch.ones(num_frames, height, width)
    mask[0] = 0.0
    return components.vace_control(video, mask, **options)


def vace_first_frame_and_depth_control(components: WanComponents, image: Tensor, depth_video: Tensor, **options) -> Tensor:
    """Both conditions in one VACE control: ``[image, depth_1, …]``, frame 0 kept. A
    single-expert baseline (expressible, untested as trained; MODELS.md)."""
    video = depth_video.clone()
    video[0] = image
    mask = torch.ones(video.shape[0], *video.shape[2:])
    mask[0] = 0.0
    return components.vace_control(video, mask, **options)


# ----------------------------------------------------------------------------- experts


class _WanExpert(GenerativeExpert):
    """True classifier-free guidance around one transformer call ``_forward(x, t, embeds)``."""

    def __init__(self, transformer: torch.nn.Module, prompt_embeds: Tensor, negative_prompt_embeds: Tensor | None, guidance_scale: float, placement: registry.Placement | None = None) -> None:
        if guidance_scale != 1.0 and negative_prompt_embeds is None:
            raise ValueError("guidance_scale != 1 needs negative prompt embeddings")
        self.transformer = transformer
        self.prompt_embeds = prompt_embeds
        self.negative_prompt_embeds = negative_prompt_embeds
        self.guidance_scale = float(guidance_scale)
        self.placement = placement
        self.forward_count = 0

    @property
    def _dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def _forward(self, x: Tensor, timestep: Tensor, embeds: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def velocity(self, x: Tensor, t: float) -> Tensor:
        """``x`` ``(P, 16, F', h, w)`` -> velocity of the same shape, float32 on x's device."""
        num_particles = x.shape[0]
        timestep = torch.full((num_particles,), t * TIMESTEP_SCALE, device=x.device, dtype=torch.float32)
        hidden = x.to(self._dtype)
        if self.placement is not None:
            self.placement.activate(self.transformer)
        conditional = self._forward(hidden, timestep, self.prompt_embeds)
        self.forward_count += 1
        if self.guidance_scale != 1.0:
            unconditional = self._forward(hidden, timestep, self.negative_prompt_embeds)
            self.forward_count += 1
            conditional = unconditional + self.guidance_scale * (conditional - unconditional)
        return conditional.to(x.dtype)


def _batch(tensor: Tensor | None, num_particles: int, like: Tensor) -> Tensor | None:
    if tensor is None:
        return None
    return tensor.to(like.device, like.dtype).expand(num_particles, *tensor.shape[1:])


class WanI2VExpert(_WanExpert):
    """Wan2.1-I2V: ``p(video | first frame, prompt)``.

    ``condition`` ``(1, 20, F', h, w)`` from :meth:`WanComponents.i2v_condition`;
    ``image_embeds`` ``(1, 257, 1280)`` from :meth:`WanComponents.encode_image`; prompt
    embeddings ``(1, L, 4096)``. Default guidance 5 (Wan's I2V default)."""

    def __init__(self, transformer, condition: Tensor, image_embeds: Tensor, prompt_embeds: Tensor, negative_prompt_embeds: Tensor | None = None, guidance_scale: float = 5.0, placement: registry.Placement | None = None) -> None:
        super().__init__(transformer, prompt_embeds, negative_prompt_embeds, guidance_scale, placement)
        self.condition = condition
        self.image_embeds = image_embeds

    def _forward(self, x: Tensor, timestep: Tensor, embeds: Tensor) -> Tensor:
        count = x.shape[0]
        hidden = torch.cat([x, _batch(self.condition, count, x)], dim=1)
        return self.transformer(
            hidden_states=hidden, timestep=timestep, encoder_hidden_states=_batch(embeds, count, x),
            encoder_hidden_states_image=_batch(self.image_embeds, count, x), return_dict=False,
        )[0]


class WanVACEExpert(_WanExpert):
    """Wan2.1 VACE with a fixed control context: ``p(video | control, prompt)``.

    ``control`` ``(1, 96, F', h, w)`` from :func:`vace_depth_control` /
    :func:`vace_first_frame_control`; ``control_scale`` multiplies every VACE layer's hint
    (diffusers' ``conditioning_scale``). Default guidance 5 (the VACE pipeline's)."""

    def __init__(self, transformer, control: Tensor, prompt_embeds: Tensor, negative_prompt_embeds: Tensor | None = None, guidance_scale: float = 5.0, control_scale: float = 1.0, placement: registry.Placement | None = None) -> None:
        super().__init__(transformer, prompt_embeds, negative_prompt_embeds, guidance_scale, placement)
        self.control = control
        self.control_scale = float(control_scale)

    def _forward(self, x: Tensor, timestep: Tensor, embeds: Tensor) -> Tensor:
        count = x.shape[0]
        num_layers = len(self.transformer.config.vace_layers)
        scale = torch.full((num_layers,), self.control_scale, device=x.device, dtype=x.dtype)
        return self.transformer(
            hidden_states=x, timestep=timestep, encoder_hidden_states=_batch(embeds, count, x),
            control_hidden_states=_batch(self.control, count, x), control_hidden_states_scale=scale, return_dict=False,
        )[0]


@torch.no_grad()
def invert(expert: GenerativeExpert, latents: Tensor, levels: list[float]) -> Tensor:
    """DDIM inversion for a rectified flow: Euler steps of the expert's own deterministic
    ODE ``dx/dt = v(x, t)`` from ``t = 0`` up to ``levels[0]`` (``levels`` descend from
    t_max to 0, as the samplers take them; the inversion walks them backwards). ``latents``
    ``(P, 16, F', h, w)`` clean; returns the latents at ``t = levels[0]``, the start of a
    regeneration (``sample_summed_velocity(..., start=...)``). Use guidance 1 (no CFG) and
    the source prompt: guided inversion does not retrace. Each step reads the velocity at
    the step's lower end, the regeneration at its upper end, so reconstruction error is
    first order in the step (it shrinks like ``1/len(levels)``). NFE ``len(levels) - 1``."""
    ascending = levels[::-1]
    x = latents
    for t, t_next in zip(ascending[:-1], ascending[1:]):
        x = x + (t_next - t) * expert.velocity(x, t)
    return x


# ----------------------------------------------------------------------------- loading


def load_wan(
    preset: str = "default",
    *,
    vace: bool = True,
    i2v: bool = True,
    device: str | torch.device = "cpu",
    offload: str = "auto",
    dtype: torch.dtype | None = None,
) -> WanComponents:
    """Load the Wan components of a registry preset: the shared VAE (float32, as Wan
    recommends) and tokenizer once (UMT5 on the first uncached prompt), plus the VACE and/or I2V transformer (and CLIP
    for I2V). Transformers stay on the CPU until
    :meth:`WanComponents.place_transformers` places them by an offload preset (registry
    ``Placement``; ``auto`` weighs weights + activations against free VRAM): call it after
    :meth:`~WanComponents.free_encoders`, so ``auto`` sees the memory UMT5 gave back. Raises ``registry.MissingWeights`` for
    every absent repo before loading anything."""
    device = torch.device(device)
    dtype = dtype or registry.default_dtype(str(device))
    roles = ["wan.vae", "wan.tokenizer", "wan.text_encoder"]
    roles += ["wan.transformer.vace"] if vace else []
    roles += ["wan.transformer.i2v", "wan.image_encoder", "wan.image_processor"] if i2v else []
    if not (vace or i2v):
        raise ValueError("load_wan needs the VACE transformer, the I2V transformer, or both")
    registry.check_available(roles, preset)
    vae = registry.load("wan.vae", preset, device=str(device), dtype=torch.float32)
    vae.enable_tiling()  # spatial tiles for encode and decode (issue 9: no video decode untiled)
    components = WanComponents(
        vae=vae,
        tokenizer=registry.load("wan.tokenizer", preset),
        text_encoder=None,
        device=device,
        dtype=dtype,
        preset=preset,
        sources={role: registry.get_spec(role, preset).describe() for role in roles},
    )
    transformers = []
    if vace:
        components.vace_transformer = registry.load("wan.transformer.vace", preset, device="cpu", dtype=dtype)
        transformers.append(components.vace_transformer)
    if i2v:
        components.i2v_transformer = registry.load("wan.transformer.i2v", preset, device="cpu", dtype=dtype)
        components.image_encoder = registry.load("wan.image_encoder", preset, device=str(device), dtype=dtype)
        components.image_processor = registry.load("wan.image_processor", preset)
        transformers.append(components.i2v_transformer)
    components.offload = offload
    return components

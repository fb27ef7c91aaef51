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
  ``control_scale`` at every VACE layer. Control videos and masks come from
  :func:`depth_control_inputs` (the depth video, all-white mask: depth-to-video),
  :func:`first_frame_control_inputs` (first frame kept, the rest generated:
  image-to-video) and :func:`first_frame_and_depth_control_inputs`; the runtime encodes
  them. Two :class:`WanVACEExpert` on one transformer give the "shared" mode: both experts
  of sim-to-video from one model, half the memory of two 14B models (DESIGN.md section 3).

This module holds the layout and the experts; :class:`~poe_backend.families.wan.runtime.WanRuntime`
owns the components (loading, prompt cache, conditioning, placement, decode).

Decisions:

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
  :data:`UNSUPPORTED_MODELS` with that reason and not registered.
"""

from __future__ import annotations


import torch
from torch import Tensor

from poe_backend.runtime.family import CheckpointedExpert
from poe_backend.sampling.experts import GenerativeExpert, particle_batches

LATENT_CHANNELS = 16
TEMPORAL_FACTOR = 4
SPATIAL_FACTOR = 8
TIMESTEP_SCALE = 1000.0  # Wan transformers take σ·1000 (MODELS.md)

#: Models the paper names that diffusers cannot load, with the reason (see module notes).
UNSUPPORTED_MODELS: dict[str, str] = {
    "alibaba-pai/Wan2.1-Fun-14B-Control": "VideoX-Fun checkpoint layout (48 input channels); no diffusers class in 0.42",
    "alibaba-pai/Wan2.1-Fun-1.3B-Control": "VideoX-Fun checkpoint layout (48 input channels); no diffusers class in 0.42",
}

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




def depth_control_inputs(depth_video: Tensor) -> tuple[Tensor, Tensor]:
    """Depth-to-video control: the depth video ``(F, 3, H, W)`` in [0, 1] (near = white),
    every frame generated (all-white mask ``(F, H, W)``)."""
    frames, _, height, width = depth_video.shape
    return depth_video, torch.ones(frames, height, width)


def first_frame_control_inputs(image: Tensor, num_frames: int) -> tuple[Tensor, Tensor]:
    """Image-to-video control: ``[image, gray…]`` (gray = 0 in [-1, 1]) with frame 0 kept
    and the rest generated. ``image`` ``(3, H, W)`` in [0, 1]."""
    _, height, width = image.shape
    video = torch.full((num_frames, 3, height, width), 0.5)
    video[0] = image
    mask = torch.ones(num_frames, height, width)
    mask[0] = 0.0
    return video, mask


def first_frame_and_depth_control_inputs(image: Tensor, depth_video: Tensor) -> tuple[Tensor, Tensor]:
    """Both conditions in one VACE control: ``[image, depth_1, …]``, frame 0 kept. A
    single-expert baseline (expressible, untested as trained; MODELS.md)."""
    video = depth_video.clone()
    video[0] = image
    mask = torch.ones(video.shape[0], *video.shape[2:])
    mask[0] = 0.0
    return video, mask


# ----------------------------------------------------------------------------- experts


class _WanExpert(CheckpointedExpert):
    """True classifier-free guidance around one transformer call ``_forward(x, t, embeds)``,
    over micro-batches of ``max_batch`` particles (None: all at once), each through both
    passes. ``forward_count`` counts passes over all particles."""

    def __init__(self, transformer: torch.nn.Module, prompt_embeds: Tensor, negative_prompt_embeds: Tensor | None, guidance_scale: float,
                 max_batch: int | None = None) -> None:
        if guidance_scale != 1.0 and negative_prompt_embeds is None:
            raise ValueError("guidance_scale != 1 needs negative prompt embeddings")
        self.transformer = transformer
        self.prompt_embeds = prompt_embeds
        self.negative_prompt_embeds = negative_prompt_embeds
        self.guidance_scale = float(guidance_scale)
        self.max_batch = max_batch
        self.forward_count = 0
        transformer.requires_grad_(False)

    @property
    def _dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def _forward(self, x: Tensor, timestep: Tensor, embeds: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def passes_per_evaluation(self) -> int:
        return 1 if self.guidance_scale == 1.0 else 2

    def velocity(self, x: Tensor, t: float) -> Tensor:
        """``x`` ``(P, 16, F', h, w)`` -> velocity of the same shape, float32 on x's device
        (differentiable in ``x``: the weights are frozen), ``max_batch`` particles at a time."""
        self.forward_count += self.passes_per_evaluation
        return torch.cat([self._guided(x[rows], t) for rows in particle_batches(x.shape[0], self.max_batch)])

    def _guided(self, x: Tensor, t: float) -> Tensor:
        timestep = torch.full((x.shape[0],), t * TIMESTEP_SCALE, device=x.device, dtype=torch.float32)
        hidden = x.to(self._dtype)
        conditional = self._forward(hidden, timestep, self.prompt_embeds)
        if self.guidance_scale != 1.0:
            unconditional = self._forward(hidden, timestep, self.negative_prompt_embeds)
            conditional = unconditional + self.guidance_scale * (conditional - unconditional)
        return conditional.to(x.dtype)


def _batch(tensor: Tensor | None, num_particles: int, like: Tensor) -> Tensor | None:
    if tensor is None:
        return None
    return tensor.to(like.device, like.dtype).expand(num_particles, *tensor.shape[1:])


class WanI2VExpert(_WanExpert):
    """Wan2.1-I2V: ``p(video | first frame, prompt)``.

    ``condition`` ``(1, 20, F', h, w)`` from :meth:`WanRuntime.i2v_condition`;
    ``image_embeds`` ``(1, 257, 1280)`` from :meth:`WanRuntime.encode_image`; prompt
    embeddings ``(1, L, 4096)``. Default guidance 5 (Wan's I2V default)."""

    def __init__(self, transformer, condition: Tensor, image_embeds: Tensor, prompt_embeds: Tensor, negative_prompt_embeds: Tensor | None = None, guidance_scale: float = 5.0,
                 max_batch: int | None = None) -> None:
        super().__init__(transformer, prompt_embeds, negative_prompt_embeds, guidance_scale, max_batch)
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

    ``control`` ``(1, 96, F', h, w)`` from :meth:`WanRuntime.vace_control`; ``control_scale`` multiplies every VACE layer's hint
    (diffusers' ``conditioning_scale``). Default guidance 5 (the VACE pipeline's)."""

    def __init__(self, transformer, control: Tensor, prompt_embeds: Tensor, negative_prompt_embeds: Tensor | None = None, guidance_scale: float = 5.0, control_scale: float = 1.0,
                 max_batch: int | None = None) -> None:
        super().__init__(transformer, prompt_embeds, negative_prompt_embeds, guidance_scale, max_batch)
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



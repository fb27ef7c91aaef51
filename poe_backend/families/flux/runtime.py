"""FLUX.1 experts on one packed latent: [dev] (global and regional), Depth [dev], Fill [dev].

:class:`FluxRuntime` is what a task uses: it owns the family's components (through the model
cache), prompt encoding (cached across jobs), conditions, the latent layout
(:class:`FluxLatentSpace`), the placement of the transformers and decoding, and hands the
sampler :class:`FluxExpert` velocity fields. The module-level condition helpers and
:class:`FluxLatentSpace` stay usable alone (benchmarks inject full-size random models).

Shapes (MODELS.md "FLUX family"): images ``(B, 3, H, W)`` with H, W multiples of 16; the VAE
latent ``(B, 16, H/8, W/8)`` is normalised ``(z - shift) · scale`` and packed 2×2 into tokens,
``x`` of shape ``(P, N, 64)`` with ``N = (H/16)(W/16)``. This packed, normalised latent is the
sampler's x-space for every FLUX expert, so their products need no conversion.

Every transformer predicts ``eps - x0`` at ``σ = t`` (our velocity) and multiplies timestep and
guidance by 1000 itself, so :class:`FluxExpert` passes ``t`` and the raw distilled guidance.
One forward is batched over the P particles in micro-batches of ``max_batch`` (the planner's,
:attr:`FluxRuntime.micro_batch`, unless the task fixes it); the sampler's state stays float32
and is cast to the model's dtype only for the forward. A conditioned expert's aligned pass
runs with the transformer's gradient checkpointing (:meth:`FluxExpert.aligned_velocity`).

Diffusers helpers are reused (``FluxPipeline._pack_latents``, ``_unpack_latents``,
``_prepare_latent_image_ids``, ``encode_prompt``); the VAE posterior's *mode* is used for
every encoding so that a seed fully determines a run.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as functional
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from torch import Tensor

from poe_backend.families.flux.declaration import SHARED, TEXT_ROLES, TRANSFORMER_ROLES
from poe_backend.runtime.cache import MODEL_CACHE, default_dtype
from poe_backend.runtime import planner
from poe_backend.runtime.planner import Budget
from poe_backend.runtime.family import CheckpointedExpert, FamilyRuntime, PromptCache
from poe_backend.runtime.job_plan import JobPlan, job_budget, plan_transformers
from poe_backend.sampling import ProductOfExperts
from poe_backend.sampling.experts import particle_batches
from poe_backend.sampling.run import checkpoint

LATENT_CHANNELS = 16
PACKED_CHANNELS = 64
TOKEN_PIXELS = 16  # one packed token covers 16x16 pixels (8x VAE, 2x2 packing)
#: Distilled guidance defaults (diffusers docs): Depth 10, Fill 30, dev 3.5.
DEFAULT_GUIDANCE = {"dev": 3.5, "depth": 10.0, "fill": 30.0}


@dataclass(frozen=True)
class PromptEmbedding:
    """One prompt encoded once: T5 ``embeds (1, L, D)`` and CLIP-L ``pooled (1, D_pool)``."""

    prompt: str
    embeds: Tensor
    pooled: Tensor


def check_size(height: int, width: int) -> None:
    """FLUX needs H and W to be positive multiples of 16 (raises ValueError naming them)."""
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % TOKEN_PIXELS:
            raise ValueError(f"{name}: must be a positive multiple of {TOKEN_PIXELS}, got {value}")


@contextmanager
def _tiled(vae: torch.nn.Module, tile: int | None) -> Iterator[None]:
    """Within the block, ``vae`` decodes in ``tile``-pixel tiles (None: untouched). The FLUX
    VAE's own tile is its ``sample_size`` (1024), so ``enable_tiling()`` alone never tiles a
    1024² image; the tile sizes are set here and restored after, as the VAE is shared."""
    if tile is None:
        yield
        return
    saved = vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size = True, tile, tile // factor
    try:
        yield
    finally:
        vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size = saved


class FluxLatentSpace:
    """The latent layout of the FLUX family at one resolution: the VAE (loaded once per
    process through the model cache), prompt encoding (text encoders loaded, used, released;
    :meth:`FluxRuntime.encode_prompts` caches the results) and packing/ids.

    ``preset`` is a model preset; ``device`` a torch device string; ``dtype`` the model
    dtype (bf16 on GPU, fp32 on CPU by default).
    """

    def __init__(
        self, height: int, width: int, *, preset: str = "default", device: str = "cpu",
        dtype: torch.dtype | None = None, max_sequence_length: int = 512, vae: torch.nn.Module | None = None,
    ) -> None:
        check_size(height, width)
        self.height, self.width, self.preset, self.device = height, width, preset, device
        self.dtype = default_dtype(device) if dtype is None else dtype
        self.max_sequence_length = max_sequence_length
        # ``vae`` injects an instance (benchmarks with random full-size weights); else the preset's, from the cache
        self.vae = MODEL_CACHE.load("flux.vae", preset, device=device, dtype=self.dtype) if vae is None else vae
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_height = height // self.vae_scale_factor
        self.latent_width = width // self.vae_scale_factor
        self.num_tokens = (self.latent_height // 2) * (self.latent_width // 2)
        self.image_ids = FluxPipeline._prepare_latent_image_ids(1, self.latent_height // 2, self.latent_width // 2, device, self.dtype)

    @property
    def event_shape(self) -> tuple[int, int]:
        """One particle's shape, ``(N, 64)``."""
        return (self.num_tokens, PACKED_CHANNELS)

    # -- text -------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> list[PromptEmbedding]:
        """Encode every prompt of a run at once (CLIP-L pooled + T5), then release the text
        encoders (encode once, then free). The encoders run on the job's device when they
        fit there after the model cache made room, else on the CPU
        (:meth:`ModelCache.load_encoders`)."""
        (text_encoder, tokenizer, text_encoder_2, tokenizer_2), encoder_device = MODEL_CACHE.load_encoders(TEXT_ROLES, self.preset, device=self.device, dtype=self.dtype)
        pipeline = FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=None,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            transformer=None,
        )
        unique = list(dict.fromkeys(prompts))
        embeds, pooled, _ = pipeline.encode_prompt(unique, unique, device=torch.device(encoder_device), max_sequence_length=self.max_sequence_length)
        # clones: a cached prompt must not keep the whole batch's tensors alive
        by_prompt = {prompt: PromptEmbedding(prompt, embeds[i : i + 1].to(self.device, self.dtype).clone(), pooled[i : i + 1].to(self.device, self.dtype).clone())
                     for i, prompt in enumerate(unique)}
        del pipeline, text_encoder, text_encoder_2
        for role in TEXT_ROLES:
            MODEL_CACHE.release(role, self.preset)
        return [by_prompt[prompt] for prompt in prompts]

    # -- images -----------------------------------------------------------------------

    def pack(self, latents: Tensor) -> Tensor:
        """``(B, C, h, w) -> (B, (h/2)(w/2), 4C)``."""
        batch, channels, height, width = latents.shape
        return FluxPipeline._pack_latents(latents, batch, channels, height, width)

    def unpack(self, packed: Tensor) -> Tensor:
        """``(B, N, 64) -> (B, 16, H/8, W/8)``."""
        return FluxPipeline._unpack_latents(packed, self.height, self.width, self.vae_scale_factor)

    @torch.no_grad()
    def encode_image(self, image: Tensor) -> Tensor:
        """Images ``(B, 3, H, W)`` in [-1, 1] -> normalised packed latents ``(B, N, 64)``
        (float32), from the VAE posterior's mode."""
        self._check_image(image)
        posterior = self.vae.encode(image.to(self.device, self.dtype)).latent_dist
        latents = (posterior.mode() - self.vae.config.shift_factor) * self.vae.config.scaling_factor
        return self.pack(latents).float()

    def preview_latent_size(self, max_pixels: int | None) -> tuple[int, int]:
        """The VAE latent ``(h, w)`` a decode of at most ``max_pixels`` pixels starts from: the
        whole latent, or one area-downsampled to ``64·h·w <= max_pixels`` (pixels = 8× latent)."""
        if max_pixels is None or max_pixels >= self.height * self.width:
            return self.latent_height, self.latent_width
        scale = math.sqrt(max_pixels / (self.height * self.width))
        return max(1, int(self.latent_height * scale)), max(1, int(self.latent_width * scale))

    @torch.no_grad()
    def decode(self, packed: Tensor, *, max_batch: int = 4, max_pixels: int | None = None, tile: int | None = None) -> Tensor:
        """Normalised packed latents ``(P, N, 64)`` -> images ``(P, 3, H, W)`` in [0, 1]
        (float32, on the CPU), decoded ``max_batch`` at a time (a cancelled job stops
        between two batches: :func:`~poe_backend.sampling.run.checkpoint`). With ``max_pixels`` below
        ``H·W`` the latents are area-downsampled first (:meth:`preview_latent_size`), giving
        ``(P, 3, h, w)`` with ``h·w <= max_pixels`` (a preview for rewards). ``tile`` (pixels)
        decodes in overlapping tiles of that side (diffusers' VAE tiling, blended over 1/4 of
        a tile): the peak is per tile, not per image."""
        images = []
        size = self.preview_latent_size(max_pixels)
        with _tiled(self.vae, tile):
            for chunk in packed.split(max_batch):
                checkpoint()
                latents = self.unpack(chunk.to(self.device, self.dtype))
                if size != (self.latent_height, self.latent_width):
                    latents = functional.interpolate(latents, size=size, mode="area")
                latents = latents / self.vae.config.scaling_factor + self.vae.config.shift_factor
                decoded = self.vae.decode(latents, return_dict=False)[0]
                images.append(((decoded.float() + 1.0) / 2.0).clamp(0.0, 1.0).cpu())
        return torch.cat(images)

    def mask_tokens(self, mask: Tensor) -> Tensor:
        """A pixel mask ``(1, 1, H, W)`` in [0, 1] -> FLUX Fill's mask channels
        ``(1, N, 256)``: 8×8 space-to-depth (64 channels at latent resolution), then packed."""
        factor = self.vae_scale_factor
        mask = mask[:, 0].reshape(1, self.latent_height, factor, self.latent_width, factor)
        mask = mask.permute(0, 2, 4, 1, 3).reshape(1, factor * factor, self.latent_height, self.latent_width)
        return self.pack(mask.to(self.device, torch.float32))

    def _check_image(self, image: Tensor) -> None:
        if image.ndim != 4 or image.shape[1] != 3 or tuple(image.shape[2:]) != (self.height, self.width):
            raise ValueError(f"image: expected (B, 3, {self.height}, {self.width}), got {tuple(image.shape)}")


class FluxExpert(CheckpointedExpert):
    """One FLUX transformer with fixed conditioning, as a velocity field on ``(P, N, 64)``.

    ``condition`` (``(1, N, C)`` or None) is concatenated to the particles on the channel
    dimension before the forward: Depth's control latents (C = 64) or Fill's masked-image
    latents plus mask (C = 320). ``guidance`` is the distilled guidance value (raw; the
    model scales it). :class:`FluxRuntime` places the transformer before the expert is made.
    ``max_batch`` particles go through one forward (micro-batches; None: all at once).
    """

    def __init__(
        self, transformer: torch.nn.Module, space: FluxLatentSpace, prompt: PromptEmbedding, *, guidance: float,
        condition: Tensor | None = None, max_batch: int | None = None, name: str = "flux",
    ) -> None:
        expected = transformer.config.in_channels - PACKED_CHANNELS
        got = 0 if condition is None else condition.shape[-1]
        if expected != got:
            raise ValueError(f"{name}: transformer takes {transformer.config.in_channels} input channels, so it needs {expected} condition channels, got {got}")
        self.transformer, self.space, self.prompt = transformer, space, prompt
        self.guidance, self.condition = guidance, condition
        self.max_batch, self.name = max_batch, name
        self.calls = 0
        transformer.requires_grad_(False)
        self.text_ids = torch.zeros(prompt.embeds.shape[1], 3, device=space.device, dtype=space.dtype)

    def velocity(self, x: Tensor, t: float) -> Tensor:
        """``E[eps - x0 | x_t = x]`` for particles ``x (P, N, 64)`` at time ``t`` (differentiable
        in ``x``: the weights are frozen, the product turns autograd off around plain calls)."""
        self.calls += 1
        return torch.cat([self._forward(x[rows], t) for rows in particle_batches(x.shape[0], self.max_batch)])

    def _forward(self, x: Tensor, t: float) -> Tensor:
        count, dtype, device = x.shape[0], self.space.dtype, self.space.device
        hidden = x.to(device, dtype)
        if self.condition is not None:
            hidden = torch.cat([hidden, self.condition.to(device, dtype).expand(count, -1, -1)], dim=2)
        guidance = torch.full((count,), self.guidance, device=device, dtype=torch.float32) if self.transformer.config.guidance_embeds else None
        output = self.transformer(
            hidden_states=hidden,
            timestep=torch.full((count,), t, device=device, dtype=dtype),
            guidance=guidance,
            pooled_projections=self.prompt.pooled.to(device).expand(count, -1),
            encoder_hidden_states=self.prompt.embeds.to(device).expand(count, -1, -1),
            txt_ids=self.text_ids,
            img_ids=self.space.image_ids,
            return_dict=False,
        )[0]
        return output.to(x.device, x.dtype)


# ---------------------------------------------------------------------------------------
# Conditioning from bundle passes


def disparity_from_depth(depth: np.ndarray) -> np.ndarray:
    """Camera-Z depth ``(H, W)`` (scene units, ``+inf`` = background) -> normalised
    disparity in [0, 1]: ``1/z`` rescaled so the nearest pixel is 1 and the farthest hit is
    0; background 0. A flat depth gives 1 on every hit. (FLUX.1 Depth was trained on Depth
    Anything maps: near = white.)"""
    depth = np.asarray(depth, dtype=np.float64)
    hit = np.isfinite(depth) & (depth > 0)
    disparity = np.zeros(depth.shape, dtype=np.float64)
    if not hit.any():
        return disparity.astype(np.float32)
    inverse = 1.0 / depth[hit]
    low, high = inverse.min(), inverse.max()
    disparity[hit] = (inverse - low) / (high - low) if high > low else 1.0
    return disparity.astype(np.float32)


def image_tensor(image: np.ndarray) -> Tensor:
    """``(H, W, 3)`` uint8 or float in [0, 1] (or ``(H, W)`` grey) -> ``(1, 3, H, W)`` in [-1, 1]."""
    array = np.asarray(image)
    array = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return torch.from_numpy(array[..., :3]).permute(2, 0, 1)[None] * 2.0 - 1.0


def depth_condition(space: FluxLatentSpace, depth: np.ndarray) -> Tensor:
    """FLUX.1 Depth's control latents ``(1, N, 64)`` from a camera-Z depth map: normalised
    disparity as a grey RGB image in [-1, 1], VAE-encoded (mode), normalised and packed."""
    return space.encode_image(image_tensor(disparity_from_depth(depth)))


def fill_condition(space: FluxLatentSpace, image: np.ndarray, mask: np.ndarray) -> Tensor:
    """FLUX.1 Fill's condition ``(1, N, 64 + 256)``: latents of ``image · (1 - mask)`` and the
    8×8 space-to-depth mask. ``mask`` ``(H, W)`` in [0, 1] (or 0/255), white = generate;
    binarised at 0.5 like diffusers' mask processor."""
    mask_array = np.asarray(mask, dtype=np.float32)
    if mask_array.max() > 1.0:
        mask_array = mask_array / 255.0
    binary = torch.from_numpy((mask_array >= 0.5).astype(np.float32))[None, None]
    masked = image_tensor(image) * (1.0 - binary)
    return torch.cat([space.encode_image(masked), space.mask_tokens(binary)], dim=2)


def box_token_weights(box: list[int] | tuple[int, int, int, int], height: int, width: int) -> Tensor:
    """Per-token weight map ``(N, 1)`` for a pixel box ``[x_min, y_min, x_max, y_max]`` (max
    exclusive): 1 on every token the box touches (MODELS.md: rows ``y0//16 … ceil(y1/16)−1``,
    columns likewise), 0 elsewhere. Boxes are clipped to the image."""
    check_size(height, width)
    rows, columns = height // TOKEN_PIXELS, width // TOKEN_PIXELS
    x0, y0, x1, y1 = box
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(width, x1), min(height, y1)
    weights = torch.zeros(rows, columns)
    if x1 > x0 and y1 > y0:
        weights[y0 // TOKEN_PIXELS : math.ceil(y1 / TOKEN_PIXELS), x0 // TOKEN_PIXELS : math.ceil(x1 / TOKEN_PIXELS)] = 1.0
    return weights.reshape(rows * columns, 1)


# ---------------------------------------------------------------------------------------
# The runtime: what a FLUX pipeline owns, for one job

#: Prompt embeddings kept across jobs, keyed by (preset, max length, dtype, device, prompt).
_PROMPTS: PromptCache[PromptEmbedding] = PromptCache(64)


class FluxRuntime(FamilyRuntime):
    """The FLUX family for one job at one resolution, owning what a diffusers pipeline owns
    (a :class:`FamilyRuntime`; one runtime serves every FLUX transformer at its resolution,
    so :meth:`plan` takes the kinds the job uses).

    * components through the model cache: the VAE (kept), the text encoders (loaded only for
      prompts not encoded before, then released: embeddings are cached per prompt across
      jobs), the transformers (placed by :meth:`plan`);
    * condition encoding (:meth:`depth_condition`, :meth:`fill_condition`,
      :meth:`encode_image`), latent packing and ids (:attr:`space`, a :class:`FluxLatentSpace`);
    * experts for the sampler (:meth:`expert`) and decoding (:meth:`decode`,
      :meth:`decode_preview` at a reduced size for rewards).

    ``budget`` is what ``auto`` plans against: ``"detect"`` (default) asks
    :func:`planner.device_budget` when the job plans (free VRAM and host RAM; None off
    CUDA, where everything is resident).
    """

    def __init__(
        self, height: int, width: int, *, preset: str = "default", device: str = "cpu",
        dtype: torch.dtype | None = None, max_sequence_length: int = 512, budget: Budget | None | str = "detect",
    ) -> None:
        self.space = FluxLatentSpace(height, width, preset=preset, device=device, dtype=dtype, max_sequence_length=max_sequence_length)
        super().__init__(preset=preset, device=device, dtype=self.space.dtype, budget=budget)

    @staticmethod
    def roles(kinds: list[str]) -> list[str]:
        """Every role a job with the ``kinds`` transformers ("dev", "depth", "fill") uses."""
        return [*SHARED, *(TRANSFORMER_ROLES[kind] for kind in kinds)]

    @property
    def num_tokens(self) -> int:
        return self.space.num_tokens

    @property
    def event_shape(self) -> tuple[int, int]:
        return self.space.event_shape

    # -- text -------------------------------------------------------------------------

    def encode_prompts(self, prompts: list[str]) -> list[PromptEmbedding]:
        """Embeddings of ``prompts``; only prompts never encoded before (with this preset,
        length, dtype and device) load the text encoders, which are released afterwards."""
        return _PROMPTS.get((self.preset, self.space.max_sequence_length, str(self.dtype), str(self.device)), prompts, self.space.encode_prompts)

    # -- conditions -------------------------------------------------------------------

    def depth_condition(self, depth: np.ndarray) -> Tensor:
        """FLUX.1 Depth's control latents ``(1, N, 64)`` from camera-Z depth ``(H, W)``."""
        return depth_condition(self.space, depth)

    def fill_condition(self, image: np.ndarray, mask: np.ndarray) -> Tensor:
        """FLUX.1 Fill's condition ``(1, N, 320)`` from ``(H, W, 3)`` and a mask ``(H, W)``."""
        return fill_condition(self.space, image, mask)

    def encode_image(self, image: np.ndarray) -> Tensor:
        """``(H, W, 3)`` uint8 -> packed normalised latents ``(1, N, 64)`` (float32)."""
        return self.space.encode_image(image_tensor(image))

    # -- transformers -----------------------------------------------------------------

    def plan(self, kinds: list[str], *, offload: str = "auto", fp8_storage: bool = False, particles: int = 1, max_batch: int | None = None,
             conditioned: Collection[str] = ()) -> JobPlan:
        """Decide where each transformer lives, how many of the job's ``particles`` go through
        one forward and how the VAE decodes, for this job before the transformers load
        (:func:`job_plan.plan_transformers`): the models' exact sizes (their configs built on
        the meta device), one particle's activations of the largest pass
        (:func:`planner.flux_job_bytes`; an aligned pass for the ``conditioned`` kinds, whose
        experts are conditioned children, and which then stay resident) and the decode,
        against :attr:`budget` (read now: models already loaded for this job, e.g.
        VQAScore, hold their memory); ``max_batch`` fixes the particles per forward;
        ``fp8_storage`` allows fp8 placements; another ``offload`` than ``auto`` names the
        placement. Raises :class:`planner.PlanError` (a MemoryError) when nothing fits."""
        unknown = [kind for kind in conditioned if kind not in kinds]
        if unknown:
            raise ValueError(f"conditioned: {unknown} are not among this job's transformers {kinds}")
        roles = [TRANSFORMER_ROLES[kind] for kind in kinds]
        configs = {role: planner.installed_config(role, self.preset) for role in roles}
        activation, decode, tiled = planner.flux_job_bytes(configs, self.space.height, self.space.width, self.space.max_sequence_length,
                                                           [TRANSFORMER_ROLES[kind] for kind in conditioned])
        self.job_plan = plan_transformers(
            roles, self.preset, self.device, offload=offload, fp8_storage=fp8_storage, particle_bytes=activation, decode_bytes=decode,
            tiled_decode_bytes=tiled, budget=job_budget(self.budget, self.device), alternating=len(roles) > 1, particles=particles,
            max_batch=max_batch, conditioned=[TRANSFORMER_ROLES[kind] for kind in conditioned],
        )
        return self.job_plan

    def transformer(self, kind: str) -> torch.nn.Module:
        """The ``kind`` transformer, loaded once per process and placed as planned."""
        return self.planned_transformer(TRANSFORMER_ROLES[kind])

    def expert(self, kind: str, prompt: PromptEmbedding, *, guidance: float, condition: Tensor | None = None, max_batch: int | None = None, name: str | None = None) -> "FluxExpert":
        """A velocity expert of the ``kind`` transformer with fixed conditioning, running
        ``max_batch`` particles per forward (default: the plan's :attr:`micro_batch`)."""
        batch = self.micro_batch if max_batch is None else max_batch
        return FluxExpert(self.transformer(kind), self.space, prompt, guidance=guidance, condition=condition, max_batch=batch, name=name or kind)

    # -- outputs ----------------------------------------------------------------------

    def decode(self, packed: Tensor, *, max_batch: int = 4) -> Tensor:
        """Packed latents ``(P, N, 64)`` -> images ``(P, 3, H, W)`` in [0, 1] (CPU, float32),
        as the plan's decode says: one image at a time, the transformers released first
        (the next job loads them again) and/or tiled in :data:`planner.DECODE_TILE`
        ["flux"]-pixel tiles when the planner found the untiled decode would not fit."""
        if self.job_plan is None:
            return self.space.decode(packed, max_batch=max_batch)
        decode = self.job_plan.decode
        if decode.free_transformers:
            self.free_transformers()
        return self.space.decode(packed, max_batch=1 if decode.per_image else max_batch, tile=planner.DECODE_TILE["flux"] if decode.tiled else None)

    def decode_preview(self, packed: Tensor, max_pixels: int) -> Tensor:
        """Packed latents ``(P, N, 64)`` -> images ``(P, 3, h, w)`` in [0, 1] with
        ``h·w <= max_pixels``: the latent is area-downsampled before the VAE decode, so a
        reward's images (VQAScore: 448² by default) cost a fraction of a full decode
        (1024² -> 448²: ~5x fewer pixels). Decoded :meth:`preview_batch` at a time."""
        return self.space.decode(packed, max_batch=self.preview_batch(packed.shape[0], max_pixels), max_pixels=max_pixels)

    def preview_batch(self, count: int, max_pixels: int) -> int:
        """Images per preview decode: as many as fit in the planned activations' room (free
        between forwards, when rewards decode), ``micro_batch · particle_bytes // one preview
        decode`` (:func:`planner.vae_decode_bytes` at :meth:`FluxLatentSpace.preview_latent_size`),
        at least 1 and at most ``count``; all ``count`` before planning. 448² previews of a
        1024² job: ~0.39 GiB each against 0.63 GiB per particle of a forward."""
        if self.job_plan is None:
            return count
        height, width = (side * self.space.vae_scale_factor for side in self.space.preview_latent_size(max_pixels))
        room = self.job_plan.micro_batch * self.job_plan.particle_bytes
        return max(1, min(count, room // planner.vae_decode_bytes("flux", 1, height, width, False)))


def regional_weights(boxes: list[list[int]], height: int, width: int, *, region_strength: float = 0.8) -> tuple[Tensor, list[Tensor]]:
    """Per-token weight maps ``(N, 1)`` of the regional product, summing to 1 on every token.

    Region r gets ``region_strength · m_r / max(1, Σ_s m_s)`` (``m_r`` its box's token map,
    overlaps share), the global expert the rest, ``1 − Σ_r`` of those. Inside a box the
    target is the geometric mixture ``p_global^(1−α) · p_region^α``; outside, the global
    expert alone. A constant total keeps every level's temperature that of one model (and
    the samplers need a scalar total weight, see :class:`RegionalProduct`)."""
    if not 0.0 <= region_strength <= 1.0:
        raise ValueError(f"region_strength: must be in [0, 1], got {region_strength}")
    masks = [box_token_weights(box, height, width) for box in boxes]
    coverage = torch.clamp(sum(masks, torch.zeros(height // TOKEN_PIXELS * (width // TOKEN_PIXELS), 1)), min=1.0)
    region_maps = [region_strength * mask / coverage for mask in masks]
    return 1.0 - sum(region_maps, torch.zeros_like(coverage)), region_maps


class RegionalProduct(ProductOfExperts):
    """A product whose weight maps add up to the same number on every token.

    :meth:`total_weight` returns that number as a float: the samplers use it for the start
    scale and the Langevin step size, and ``mcmc.ula_step`` takes ``math.sqrt`` of the step,
    which a map would break. Raises ValueError when the total is not constant."""

    def total_weight(self) -> float | Tensor:
        total = super().total_weight()
        if isinstance(total, Tensor):
            first = total.flatten()[0]
            if not torch.allclose(total, first.expand_as(total)):
                raise ValueError("regional weights must add up to the same value on every token")
            return float(first)
        return total

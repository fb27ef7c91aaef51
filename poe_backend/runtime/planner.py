"""Memory planner: from the real configs and the job's sizes, decide where every big model
lives during sampling, and how the VAE decodes, before anything is loaded.

Public API (stable; all sizes in bytes unless a name says GiB):

* ``full_configs()[role] -> (loader, config)``: full-size configs of the big models, with the
  role names and loader strings of :mod:`poe_backend.models.specs`.
* ``installed_size(role, preset)``: the same for the files a job will load.
* ``ModelSize(role, weight_bytes, fp8_weight_bytes, num_blocks, largest_block_bytes,
  non_block_bytes, largest_leaf_bytes)`` and ``model_size(role, loader, config,
  dtype=torch.bfloat16)``: exact sizes, built on the meta device (no memory, no download).
* Activation / decode estimators (peak extra bytes of one batched forward in bf16; of one decode in the VAE's dtype):
  ``flux_activation_bytes(tokens, text_tokens, batch)``,
  ``wan_activation_bytes(latent_frames, latent_h, latent_w, batch, vace_layers=0)``,
  ``framepack_activation_bytes(section_frames, latent_h, latent_w, batch)``,
  ``vae_decode_bytes(family, frames, height, width, tiled)``; of one conditioned expert's
  aligned pass (forward and backward with gradient checkpointing, rule 8):
  ``flux_conditioned_bytes(tokens, text_tokens, batch)``,
  ``wan_conditioned_bytes(latent_frames, latent_h, latent_w, batch, vace_layers=0)``.
* ``Budget(vram_free_bytes, ram_free_bytes)``, ``Budget.detect(device)``, ``device_budget(device)``,
  ``Budget.nominal(vram_gib, ram_gib)`` (a card/RAM size minus context and OS baselines).
* ``plan(models, activation_bytes, decode_bytes, budget, *, alternating,
  allow_fp8=True, tiled_decode_bytes=None, particles=1, max_batch=None, resident_roles=())
  -> Plan``; ``Plan.placements[role]`` is a ``RolePlan(placement, fp8_storage)`` with
  placement in ``PLACEMENTS``; ``Plan`` also holds ``micro_batch`` (particles per expert
  forward, rule 9), ``decode`` (``DecodePlan(tiled, per_image, free_transformers)``),
  ``peak_vram_bytes``, ``peak_host_bytes``, ``reasons`` and ``to_json()``. ``PlanError`` when
  nothing fits; its message names what to lower. ``decode_plan(models, placements,
  decode_bytes, budget, tiled_decode_bytes=None)``: rule 7 alone, and ``micro_batch_beside(
  models, placements, particle_bytes, budget, particles)``: rule 9 alone, for placements an
  explicit ``offload`` named. ``micro_batch(particles, particle_bytes, room_bytes)``: rule 9's
  arithmetic, a pure function.
* Jobs from configs: ``installed_config(role, preset)``, ``flux_job_bytes(configs, height,
  width, text_tokens, conditioned)``, ``wan_job_bytes(configs, frames, height, width,
  conditioned)`` and ``framepack_job_bytes(config, window, sections, height, width)`` give
  ``(one particle's activations, decode, tiled decode)``; the runtimes plan with them and
  :func:`plan_report` (``poe-backend models plan``) prints the same estimates for the
  full-size models of every task (:class:`Job`).

Placements (one way each, applied by the runtime with diffusers' mechanisms):

* ``resident`` — on the device for the whole job (``fp8_storage``: diffusers
  ``enable_layerwise_casting(float8_e4m3fn -> bf16)`` first; Linear/Conv weights stored in
  1 byte, norms and embeddings kept in bf16, each layer upcast for its own forward).
* ``group_offload`` — ``apply_group_offloading(offload_type="block_level",
  num_blocks_per_group=1, use_stream=True, low_cpu_mem_usage=True)``: blocks stream in while
  the previous one computes, from the module's own host copy, packed per block into
  page-locked buffers (:func:`~poe_backend.runtime.placement.pin_offload_groups`): one host
  copy, locked at exactly its size (diffusers 0.42.1, ``hooks/group_offloading.py``:
  without ``low_cpu_mem_usage`` its ``_to_cpu`` would pin a second copy of any parameter
  not pinned already).
* ``leaf_offload`` — ``apply_group_offloading(offload_type="leaf_level", use_stream=True,
  low_cpu_mem_usage=True)`` from the same packed buffers: the last resort, one layer at a
  time.

Policy (ComfyUI-style: sizes known before loading, a reserve for activations, partial
offload as the fallback, one place that decides):

1. Never a whole-model move per evaluation: there is no ``model`` placement. When several
   experts alternate at every level, model offload swaps every model in and out at every
   evaluation (a 22 GiB FLUX transformer over PCIe at ~20 GB/s is over a second per move,
   more than its forward's compute; the measured swap cost is in README.md, Measurements,
   GPU); streaming blocks overlaps the transfer with compute and keeps VRAM small.
   ``alternating`` is recorded in the plan and the reasons; placements never depend on a
   per-evaluation move either way.
2. All resident in bf16 when weights + activations + decode-time residue + reserve fit:
   fastest and exact.
3. Else, if ``allow_fp8``, all resident with fp8 storage when that fits: no transfers, the
   compute stays bf16, and weight memory halves (diffusers documents this for FLUX/Wan);
   a small quality cost, cheaper than streaming ~22 GiB per forward.
4. Else group-offload the fewest models, largest first (k = 1, 2, ...): the others stay
   resident (bf16 if that fits, else fp8), the offloaded ones stream in fp8 when allowed
   (half the transfer and half the host copy). VRAM per streamed model: its non-block
   parameters + two blocks (the current one and the prefetched one).
5. Else leaf offload of every model.
6. Host RAM must hold each offloaded copy once, plus the load-time transient: resident
   models load first (bf16 ones straight to the device; fp8 ones on the CPU, cast, then
   moved, so their host copy is gone before the next loads), then the offloaded ones, each loaded in bf16 and cast before the next.
   When the peak exceeds free RAM the plan refuses (``PlanError``) naming what to lower.
7. Decode: one image/video at a time (sliced); the transformers are freed before decode when
   the decode peak does not fit beside them; tiled decode when it still does not fit.
8. A conditioned expert (``sampling.experts.Conditioning``) back-propagates through its
   transformer once per evaluation (a vector–Jacobian product for the input, weights frozen),
   with gradient checkpointing of the blocks: its models (``resident_roles``) stay resident,
   in bf16 or fp8 (layerwise casting keeps exact gradients, tests/families/test_flux.py:
   the saved upcast weights are what the backward reads, one recomputed block's bf16
   weights at a time, ≤ 0.8 GB, inside the reserve), never streamed: group offload moves a
   block's weights back to the host after its forward and the backward then meets host
   weights (a device mismatch: huggingface/diffusers#11515's test of training under group
   offloading). Its pass costs :func:`flux_conditioned_bytes` / :func:`wan_conditioned_bytes`
   per particle.
9. Particles per forward (the micro-batch B): placements are chosen for ONE particle's
   activations (``activation_bytes`` is one particle's; activations are linear in the
   batch), then B is the fewest equal micro-batches of the job's ``particles`` whose
   activations fit beside those placements (:func:`micro_batch`). An offloaded or fp8 model
   costs transfers or precision at every forward for the whole job; a smaller batch only
   costs parallelism, and one 1024² FLUX particle (4608 tokens) already fills a large GPU.
   Equal micro-batches: the same number of forwards as the largest batch that fits, with a
   lower peak (P = 32 with room for 31: two of 16, not 31 + 1). An explicit ``max_batch``
   instead plans the placements for that many particles per forward.

The reserve is ``max(1 GiB, 5 % of free VRAM)`` (allocator fragmentation, cuBLAS
workspaces; ComfyUI's ``minimum_inference_memory`` is ~1 GiB).

Estimates are formulas from the architectures, not measurements (rule 8's saved-tensor
counts are counted on the CPU); they are unverified on a GPU. Attention is assumed to run through SDPA flash / memory-efficient kernels (memory
linear in tokens).
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Collection, Literal

import torch

GiB = 2**30
BF16 = 2
PLACEMENTS: tuple[str, ...] = ("resident", "group_offload", "leaf_offload")
Placement = Literal["resident", "group_offload", "leaf_offload"]
CUDA_CONTEXT_BYTES = GiB // 2
HOST_BASELINE_BYTES = 4 * GiB  # OS + Python + torch/CUDA libraries (RSS before any model)

def full_configs() -> dict[str, tuple[str, dict[str, Any]]]:
    """role -> ``(loader, config)`` of every family's full-size models, as the families declare
    them (``FamilyFacts.full_configs``: the published ``config.json`` values)."""
    from poe_backend.models.specs import family_facts

    return {role: (loader, dict(config)) for facts in family_facts().values() for role, (loader, config) in facts.full_configs.items()}


class PlanError(MemoryError):
    """No placement fits the budget; the message says what to lower."""


# ---------------------------------------------------------------------------------------
# Model sizes (meta device)


@dataclass(frozen=True)
class ModelSize:
    """Exact sizes of one model in bytes. ``fp8_weight_bytes``: under layerwise casting
    (Linear/Conv weights outside diffusers' skip patterns in 1 byte, the rest as loaded);
    equal to ``weight_bytes`` for models that cannot be cast (transformers models).
    Blocks are the children of the model's top-level ``ModuleList``s (what block-level group
    offload streams); ``non_block_bytes`` stays on the device while the model runs."""

    role: str
    weight_bytes: int
    fp8_weight_bytes: int
    num_blocks: int
    largest_block_bytes: int
    non_block_bytes: int
    largest_leaf_bytes: int
    fp8_non_block_bytes: int

    def stored_bytes(self, fp8: bool) -> int:
        return self.fp8_weight_bytes if fp8 else self.weight_bytes

    def pinned_bytes(self, placement: str, fp8: bool) -> int:
        """Host bytes page-locked while the model streams: the blocks under block-level
        offload (diffusers moves the rest synchronously, from pageable memory), everything
        under leaf offload (:func:`poe_backend.runtime.placement.pin_offload_groups`)."""
        if placement == "group_offload":
            return self.stored_bytes(fp8) - (self.fp8_non_block_bytes if fp8 else self.non_block_bytes)
        return self.stored_bytes(fp8)

    def streamed_vram_bytes(self, placement: str, fp8: bool) -> int:
        """Device bytes while a streamed model runs: non-block parameters + two groups
        (current + prefetched), scaled by the fp8 ratio when cast."""
        ratio = self.fp8_weight_bytes / self.weight_bytes if fp8 else 1.0
        unit = self.largest_block_bytes if placement == "group_offload" else self.largest_leaf_bytes
        return int(ratio * (self.non_block_bytes + 2 * unit)) if placement == "group_offload" else int(ratio * 2 * unit)


def _tensor_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def _as_loaded(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Give the meta model the dtypes ``from_pretrained(torch_dtype=dtype)`` loads it in:
    ``dtype``, except the parameters of the model's ``_keep_in_fp32_modules``, which stay
    float32 in half precision (Wan keeps its norms, time embedder and modulation tables in
    fp32); buffers stay as the constructor made them (Wan's rope tables: fp32), since they are
    not in the checkpoint."""
    keep = (getattr(model, "_keep_in_fp32_modules", None) or ()) if dtype in (torch.float16, torch.bfloat16) else ()
    for name, parameter in model.named_parameters():
        parameter.data = parameter.data.to(torch.float32 if any(module in name.split(".") for module in keep) else dtype)


def _fp8_savings(model: torch.nn.Module) -> tuple[int, int]:
    """Bytes layerwise fp8 casting saves on the whole model and on its parameters outside
    the blocks (the children of its top-level ``ModuleList``s)."""
    from diffusers.hooks._common import _GO_LC_SUPPORTED_PYTORCH_LAYERS as SUPPORTED_PYTORCH_LAYERS
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    # as ``ModelMixin.enable_layerwise_casting`` skips them: the defaults plus the model's own
    patterns = (*DEFAULT_SKIP_MODULES_PATTERN, *(model._keep_in_fp32_modules or ()), *(model._skip_layerwise_casting_patterns or ()))
    block_prefixes = tuple(f"{name}." for name, child in model.named_children() if isinstance(child, torch.nn.ModuleList))
    saved, saved_outside = 0, 0
    for name, child in model.named_modules():
        if isinstance(child, SUPPORTED_PYTORCH_LAYERS) and not any(re.search(p, name) for p in patterns):
            here = sum(p.numel() * (p.element_size() - 1) for p in child.parameters(recurse=False))
            saved += here
            saved_outside += 0 if name.startswith(block_prefixes) else here
    return saved, saved_outside


def model_size(role: str, loader: str, config: dict[str, Any], dtype: torch.dtype = torch.bfloat16) -> ModelSize:
    """Build ``loader``'s class from ``config`` on the meta device, in the dtypes
    ``from_pretrained`` would load it in (:func:`_as_loaded`), and measure it."""
    import importlib

    module_name, class_name = loader.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    with torch.device("meta"):
        if module_name == "transformers":
            config_cls = cls.config_class
            model = cls(config_cls(**config))
        else:
            model = cls(**config)
    _as_loaded(model, dtype)
    blocks = [block for child in model.children() if isinstance(child, torch.nn.ModuleList) for block in child]
    if module_name == "transformers":  # Qwen2.5-VL nests its layers one level down
        blocks = [block for sub in model.modules() if isinstance(sub, torch.nn.ModuleList) for block in sub]
    total = _tensor_bytes(model)
    block_bytes = [_tensor_bytes(block) for block in blocks] or [0]
    leaves = [_tensor_bytes(m) for m in model.modules() if not list(m.children())]
    non_block = total - sum(block_bytes)
    saved, saved_outside = _fp8_savings(model) if module_name == "diffusers" else (0, 0)
    return ModelSize(role, total, total - saved, len(blocks), max(block_bytes), non_block, max(leaves), non_block - saved_outside)


@functools.lru_cache(maxsize=64)
def installed_config(role: str, preset: str) -> dict[str, Any]:
    """The ``config.json`` of ``role``'s files on this machine (:func:`~poe_backend.models.lookup.resolve`),
    without diffusers' ``_``-prefixed bookkeeping keys. Read it, never mutate it (cached)."""
    from poe_backend.models.lookup import resolve

    config = json.loads((resolve(role, preset) / "config.json").read_text())
    return {key: value for key, value in config.items() if not key.startswith("_")}


@functools.lru_cache(maxsize=64)
def installed_size(role: str, preset: str) -> ModelSize:
    """:func:`model_size` of ``role`` from :func:`installed_config`, so a job plans with the
    exact sizes of what it will load, before loading it."""
    from poe_backend.models.specs import get_spec

    return model_size(role, get_spec(role, preset).loader, installed_config(role, preset))


def config_value(loader: str, config: dict[str, Any], key: str) -> Any:
    """``config[key]``, else the default of that argument of ``loader``'s class (the full
    FramePack config above lists only what differs from the class defaults)."""
    import importlib
    import inspect

    if key in config:
        return config[key]
    module_name, class_name = loader.split(":")
    return inspect.signature(getattr(importlib.import_module(module_name), class_name).__init__).parameters[key].default


@functools.lru_cache(maxsize=None)
def full_size(role: str) -> ModelSize:
    """:func:`model_size` of a role in :data:`full_configs()` (bf16)."""
    loader, config = full_configs()[role]
    return model_size(role, loader, config)


# ---------------------------------------------------------------------------------------
# Activation and decode estimates (bytes, bf16)

#: Live ``(batch, tokens, hidden)`` tensors at the peak of one block, per family. FLUX /
#: HunyuanVideo single-stream block: residual 1 + norm 1 + q,k,v 3 + roped q,k 2 + attention
#: out 1 + MLP 4 + GELU 4 + concat 5 + out 1 ≈ 22, rounded up to 24. Wan block (FFN 2.7×):
#: residual 1 + norm in fp32 2 + q,k,v 3 + roped q,k in fp32 4 + attention out 1 ≈ 11,
#: rounded up to 12; VACE keeps one hint per VACE layer plus the control stream alive for the
#: whole forward.
FLUX_LIVE_TENSORS = 24
WAN_LIVE_TENSORS = 12


def flux_activation_bytes(tokens: int, text_tokens: int, batch: int, *, hidden: int = 3072) -> int:
    """Peak activation bytes of one batched FLUX forward: ``24 · batch · (tokens +
    text_tokens) · hidden · 2`` (tokens = H/16 · W/16; 1024² → 4096, T5 512)."""
    return FLUX_LIVE_TENSORS * batch * (tokens + text_tokens) * hidden * BF16


def wan_activation_bytes(latent_frames: int, latent_h: int, latent_w: int, batch: int, *, vace_layers: int = 0, hidden: int = 5120, text_tokens: int = 512) -> int:
    """Peak activation bytes of one batched Wan forward (CFG runs as separate passes, so
    ``batch`` = particles): tokens = F' · H'/2 · W'/2 (patch 1×2×2; 81×480×832 → 21·30·52 =
    32760); ``(12 + vace hints + 1 if VACE) · batch · (tokens + text) · hidden · 2``."""
    tokens = latent_frames * (latent_h // 2) * (latent_w // 2)
    live = WAN_LIVE_TENSORS + (vace_layers + 1 if vace_layers else 0)
    return live * batch * (tokens + text_tokens) * hidden * BF16


def framepack_activation_bytes(section_frames: int, latent_h: int, latent_w: int, batch: int, *, hidden: int = 3072, text_tokens: int = 256, image_tokens: int = 729) -> int:
    """Peak activation bytes of one FramePack forward (HunyuanVideo blocks, as FLUX): the
    section's tokens F'·H'/2·W'/2 plus the clean history (inverted ``history_sizes``
    [1, 2, 16]: 2 frames at 1×, 2 at 2× = 1 frame-equivalent / 4, 16 at 4× = 4 / 16),
    text and SigLIP image tokens."""
    frame = (latent_h // 2) * (latent_w // 2)
    tokens = section_frames * frame + 2 * frame + frame // 4 + 4 * frame // 16
    return FLUX_LIVE_TENSORS * batch * (tokens + text_tokens + image_tokens) * hidden * BF16


# ---------------------------------------------------------------------------------------
# A conditioned expert's aligned pass: forward and backward, checkpointed (rule 8)

#: ``(batch, tokens, hidden)`` tensors autograd saves inside one transformer block for its
#: backward, counted with ``torch.autograd.graph.saved_tensors_hooks`` (bf16 as loaded, CPU):
#: FLUX double-stream 14.1, single-stream 13.1 (the same at full and at 1/8 width); Wan 21.0
#: at full width (its norms and rope run in fp32), 21.2 at 1/20 width; rounded up.
#: tests/runtime/test_planner.py counts them at reduced width. Under gradient checkpointing
#: a block keeps only its input (one tensor) until the backward recomputes it; then these,
#: for its own backward only.
FLUX_BLOCK_SAVED = 15
WAN_BLOCK_SAVED = 22
#: The same, saved outside the checkpointed blocks (embedders, output norm and projection):
#: FLUX 1.2 at full width, 1.7 at 1/8; Wan 2.2 at full width, 3.1-3.2 at 1/20 (its fp32
#: output norm); rounded up.
FLUX_OUTSIDE_SAVED = 2
WAN_OUTSIDE_SAVED = 4
#: Gradients alive while one block back-propagates (an estimate, not counted: its output's
#: and input's, attention's q/k/v and the MLP's hidden layer).
BACKWARD_GRADIENTS = 6


def conditioned_bytes(unit_bytes: int, blocks: int, *, outside: int, forward_bytes: int, block_saved: int, passes: int = 1) -> int:
    """Peak activation bytes of one aligned pass with gradient checkpointing, in units of one
    ``(batch, tokens, hidden)`` activation (``unit_bytes``): every pass keeps its blocks'
    inputs and what is saved outside them, ``passes · (blocks + outside)``, until the backward
    (with true CFG both passes' graphs, since the guided velocity combines them before the
    loss); on top, the larger of a plain forward's peak (``forward_bytes``: one block's live
    tensors) and one recomputed block's backward (``block_saved + BACKWARD_GRADIENTS``):
    max(forward peak, backward peak)."""
    return unit_bytes * passes * (blocks + outside) + max(forward_bytes, unit_bytes * (block_saved + BACKWARD_GRADIENTS))


def flux_conditioned_bytes(tokens: int, text_tokens: int, batch: int, *, hidden: int = 3072, blocks: int = 57) -> int:
    """:func:`conditioned_bytes` of FLUX (19 double + 38 single blocks, each checkpointed on its
    image and text tokens): ``batch · (tokens + text) · hidden · 2 · (blocks + 2 + 24)``
    (a forward's block peak, 24, exceeds a block's backward, 15 + 6). 1024² with 512 text
    tokens: 2.19 GiB per particle, 3.5× a plain forward's 0.63 GiB."""
    unit = batch * (tokens + text_tokens) * hidden * BF16
    forward = flux_activation_bytes(tokens, text_tokens, batch, hidden=hidden)
    return conditioned_bytes(unit, blocks, outside=FLUX_OUTSIDE_SAVED, forward_bytes=forward, block_saved=FLUX_BLOCK_SAVED)


def wan_conditioned_bytes(latent_frames: int, latent_h: int, latent_w: int, batch: int, *, vace_layers: int = 0, hidden: int = 5120, blocks: int = 40,
                          passes: int = 2, text_tokens: int = 512) -> int:
    """:func:`conditioned_bytes` of Wan: each block (and each VACE block) checkpointed on its
    ``F'·H'/2·W'/2`` video tokens (the text is shared by every block), ``passes`` = 2 with
    true CFG; at full size a block's backward (22 + 6) exceeds a forward's peak
    (:func:`wan_activation_bytes`, 21.3 for VACE): ``batch · tokens · hidden · 2 · (passes ·
    (blocks + vace + 4) + 28)``. 832×480×81 (32760 tokens): VACE-14B 41.2 GiB, I2V-14B
    36.2 GiB per particle."""
    unit = batch * latent_frames * (latent_h // 2) * (latent_w // 2) * hidden * BF16
    forward = wan_activation_bytes(latent_frames, latent_h, latent_w, batch, vace_layers=vace_layers, hidden=hidden, text_tokens=text_tokens)
    return conditioned_bytes(unit, blocks + vace_layers, outside=WAN_OUTSIDE_SAVED, forward_bytes=forward, block_saved=WAN_BLOCK_SAVED, passes=passes)


@dataclass(frozen=True)
class DecoderCost:
    """How one family's VAE decodes: ``per_pixel`` live values per output pixel and frame
    at full resolution (channels × live tensors), ``chunk_frames`` pixel frames decoded at
    once (0: all), the spatial ``tile`` side when tiled, the decoder's ``dtype_bytes`` and how
    many fp32 copies of the whole output it holds at the end (``output_copies``)."""

    per_pixel: int
    chunk_frames: int
    tile: int
    dtype_bytes: int
    output_copies: int


#: FLUX VAE (model dtype, bf16 on GPU): 256 channels at full resolution after the last
#: upsample, ~4 live -> 1024 per pixel, one image. Wan VAE (fp32, as Wan recommends): causal,
#: one latent frame (4 pixel frames) at a time, 192 channels × 4. HunyuanVideo VAE (fp32):
#: ``use_framewise_decoding`` is on by default, so even untiled it decodes 5 latent frames
#: (17 pixel frames) at a time and keeps the decoded chunks before concatenating them (two
#: copies of the output), 256 × 4 per pixel.
DECODERS: dict[str, DecoderCost] = {
    "flux": DecoderCost(1024, 1, 512, BF16, 1),
    "wan": DecoderCost(768, 4, 256, 4, 1),
    "framepack": DecoderCost(1024, 17, 256, 4, 2),
}
#: family -> the tile side (pixels) a tiled decode uses; the runtimes set it on the VAE.
DECODE_TILE: dict[str, int] = {family: cost.tile for family, cost in DECODERS.items()}


def vae_decode_bytes(family: str, frames: int, height: int, width: int, tiled: bool) -> int:
    """Peak bytes of decoding ONE image/video (decode is sliced: one particle at a time):
    ``per_pixel · chunk_frames · area · dtype_bytes`` (area: the tile when ``tiled``) plus
    the output in fp32 (``output_copies · frames · 3 · H · W · 4``). ``frames`` = 1 for images."""
    cost = DECODERS[family]
    chunk_frames = min(frames, cost.chunk_frames or frames)
    area = min(cost.tile, height) * min(cost.tile, width) if tiled else height * width
    return cost.per_pixel * chunk_frames * area * cost.dtype_bytes + cost.output_copies * frames * 3 * height * width * 4


# ---------------------------------------------------------------------------------------
# Budget and plan


@dataclass(frozen=True)
class Budget:
    """Free device memory and free host RAM in bytes."""

    vram_free_bytes: int
    ram_free_bytes: int

    @classmethod
    def detect(cls, device: str | torch.device) -> "Budget":
        """Free VRAM (:func:`cuda_free_bytes`; 0 off CUDA) and ``MemAvailable``."""
        vram = cuda_free_bytes(device) if str(device).startswith("cuda") else 0
        return cls(vram, _mem_available())

    @classmethod
    def nominal(cls, vram_gib: float, ram_gib: float) -> "Budget":
        """A card of ``vram_gib`` and a machine of ``ram_gib`` before anything is loaded:
        minus the CUDA context and the host baseline."""
        return cls(int(vram_gib * GiB) - CUDA_CONTEXT_BYTES, int(ram_gib * GiB) - HOST_BASELINE_BYTES)

    @property
    def reserve_bytes(self) -> int:
        return reserve_bytes(self.vram_free_bytes)


def reserve_bytes(free_bytes: int) -> int:
    """The working reserve kept free on a device with ``free_bytes`` free:
    ``max(1 GiB, 5 %)`` (allocator fragmentation, cuBLAS workspaces, one layer's
    activations of an encoder)."""
    return max(GiB, free_bytes // 20)


def cuda_free_bytes(device: str | torch.device) -> int:
    """Bytes this process can still allocate on a CUDA device: the driver's free memory plus
    torch's reserved but unallocated blocks, capped by the process's memory fraction
    (``torch.cuda.set_per_process_memory_fraction``: a shared card, or a 24 GB card emulated
    on a larger one)."""
    device = torch.device(device)
    free, total = torch.cuda.mem_get_info(device)
    reserved, allocated = torch.cuda.memory_reserved(device), torch.cuda.memory_allocated(device)
    return int(min(free + reserved - allocated, torch.cuda.get_per_process_memory_fraction(device) * total - allocated))


def device_budget(device: str | torch.device) -> Budget | None:
    """:meth:`Budget.detect` of a CUDA ``device``; None off CUDA (models stay in host
    memory there: nothing to plan)."""
    return Budget.detect(device) if str(device).startswith("cuda") and torch.cuda.is_available() else None


def _mem_available() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    raise RuntimeError("cannot read free host RAM")


@dataclass(frozen=True)
class RolePlan:
    placement: Placement
    fp8_storage: bool


@dataclass(frozen=True)
class DecodePlan:
    """``per_image``: decode one particle at a time; ``free_transformers``: release the
    sampling models before decoding; ``tiled``: ``vae.enable_tiling()``."""

    tiled: bool
    per_image: bool
    free_transformers: bool


@dataclass
class Plan:
    """Placements and decode of one job, its estimated device and host peaks, and
    ``pinned_host_bytes``: the page-locked host copies of the streamed models (their stored
    bytes, exactly what :func:`poe_backend.runtime.placement.pin_offload_groups` locks;
    part of ``peak_host_bytes``). ``micro_batch`` of the job's ``particles`` go through
    each expert forward (rule 9); ``particle_bytes`` is one particle's activations."""

    placements: dict[str, RolePlan]
    decode: DecodePlan
    peak_vram_bytes: int
    peak_host_bytes: int
    pinned_host_bytes: int
    alternating: bool
    reasons: list[str] = field(default_factory=list)
    micro_batch: int = 1
    particles: int = 1
    particle_bytes: int = 0

    def to_json(self) -> str:
        data = asdict(self)
        data["peak_vram_gib"] = round(self.peak_vram_bytes / GiB, 2)
        data["peak_host_gib"] = round(self.peak_host_bytes / GiB, 2)
        return json.dumps(data, sort_keys=True)

    def describe(self) -> str:
        """One short line: ``role=placement[+fp8]`` per model, decode, peaks in GiB."""
        roles = " ".join(f"{role.split('.')[-1]}={rp.placement}{'+fp8' if rp.fp8_storage else ''}" for role, rp in self.placements.items())
        decode = ("tiled" if self.decode.tiled else "full") + (", free first" if self.decode.free_transformers else "")
        return (f"{roles} | {self.micro_batch} of {self.particles} particles per forward | decode {decode} | "
                f"VRAM {self.peak_vram_bytes / GiB:.1f} GiB, host {self.peak_host_bytes / GiB:.1f} GiB (pinned {self.pinned_host_bytes / GiB:.1f})")


def micro_batch(particles: int, particle_bytes: int, room_bytes: int) -> int:
    """Particles per forward (rule 9): the fewest equal micro-batches of ``particles`` whose
    activations (``particle_bytes`` each, linear in the batch) fit in ``room_bytes``, i.e.
    ``ceil(P / ceil(P / floor(room / particle)))``; at least 1 (the placement was chosen to
    fit one particle), ``particles`` when activations cost nothing."""
    if particle_bytes <= 0:
        return particles
    largest = max(1, min(particles, room_bytes // particle_bytes))
    return math.ceil(particles / math.ceil(particles / largest))


def _sampling_vram(models: list[ModelSize], placements: dict[str, RolePlan], activation_bytes: int) -> int:
    total = activation_bytes
    streamed = [0]
    for model in models:
        chosen = placements[model.role]
        if chosen.placement == "resident":
            total += model.stored_bytes(chosen.fp8_storage)
        else:  # one streamed model runs at a time: its footprint is not summed
            streamed.append(model.streamed_vram_bytes(chosen.placement, chosen.fp8_storage))
    return total + max(streamed)


def _host_peak(models: list[ModelSize], placements: dict[str, RolePlan]) -> int:
    """Resident models load first: bf16 ones straight to the device
    (``from_pretrained(device_map=device)``, no host copy), fp8 ones on the CPU in bf16, cast,
    then moved (a transient host copy); then the offloaded ones, each loaded in bf16 and cast
    before the next (rule 6)."""
    peak, settled = 0, 0
    for model in sorted(models, key=lambda m: placements[m.role].placement != "resident"):
        chosen = placements[model.role]
        direct = chosen.placement == "resident" and not chosen.fp8_storage
        peak = max(peak, settled + (0 if direct else model.weight_bytes))
        if chosen.placement != "resident":
            settled += model.stored_bytes(chosen.fp8_storage)
    return HOST_BASELINE_BYTES + max(peak, settled)


def _candidates(models: list[ModelSize], allow_fp8: bool, resident_roles: frozenset[str]):
    """Placements in policy order (rules 2-5), each with the reason it is tried; the models
    of ``resident_roles`` (conditioned experts', rule 8) are never streamed."""
    roles = [m.role for m in models]
    yield {r: RolePlan("resident", False) for r in roles}, "all resident in bf16"
    if allow_fp8:
        yield {r: RolePlan("resident", True) for r in roles}, "all resident with fp8 storage"
    by_size = [m for m in sorted(models, key=lambda m: -m.weight_bytes) if m.role not in resident_roles]
    for count in range(1, len(by_size) + 1):
        streamed = {m.role for m in by_size[:count]}
        for resident_fp8 in (False, True) if allow_fp8 else (False,):
            yield {r: RolePlan("group_offload", allow_fp8) if r in streamed else RolePlan("resident", resident_fp8) for r in roles}, f"group offload of {', '.join(sorted(streamed))}"
    if by_size:
        kept = f" ({', '.join(sorted(resident_roles))} resident: conditioned)" if resident_roles else ""
        yield {r: RolePlan("resident", allow_fp8) if r in resident_roles else RolePlan("leaf_offload", allow_fp8) for r in roles}, f"leaf offload of every model{kept}"


def plan(models: list[ModelSize], activation_bytes: int, decode_bytes: int, budget: Budget, *, alternating: bool, allow_fp8: bool = True,
         tiled_decode_bytes: int | None = None, particles: int = 1, max_batch: int | None = None, resident_roles: Collection[str] = ()) -> Plan:
    """Choose placements and the micro-batch for the sampling models (see the module
    docstring for the rules). ``activation_bytes``: ONE particle's activations of the job's
    largest pass (rules 8-9); ``particles``: the job's particles; ``max_batch``: particles per
    forward fixed by the task (placements then planned for that many); ``resident_roles``:
    models conditioned experts back-propagate through (rule 8); ``decode_bytes``: one
    untiled decode (:func:`vae_decode_bytes`), ``tiled_decode_bytes`` its tiled form."""
    if not models:
        raise ValueError("plan needs at least one model")
    room = budget.vram_free_bytes - budget.reserve_bytes
    fixed = min(max_batch, particles) if max_batch else None
    for placements, why in _candidates(models, allow_fp8, frozenset(resident_roles)):
        weights = _sampling_vram(models, placements, 0)
        if weights + (fixed or 1) * activation_bytes > room:
            continue
        host = _host_peak(models, placements)
        if host > budget.ram_free_bytes + HOST_BASELINE_BYTES:
            raise PlanError(_host_message(host, budget, why))
        batch = fixed or micro_batch(particles, activation_bytes, room - weights)
        sampling = weights + batch * activation_bytes
        reasons = [f"{why}: sampling needs {_size(sampling)} of {_size(room)} (free {_size(budget.vram_free_bytes)} minus reserve {_size(budget.reserve_bytes)})",
                   _batch_reason(batch, particles, activation_bytes, fixed is not None)]
        if alternating:
            reasons.append("experts alternate at every evaluation: no whole-model moves, streamed models move block by block")
        decode, decode_peak = _decode(weights, decode_bytes, tiled_decode_bytes, room, reasons)
        pinned = sum(model.pinned_bytes(placements[model.role].placement, placements[model.role].fp8_storage) for model in models if placements[model.role].placement != "resident")
        return Plan(placements, decode, max(sampling, decode_peak), host, pinned, alternating, reasons, batch, particles, activation_bytes)
    kept = f"; {', '.join(sorted(resident_roles))} stay resident (conditioned)" if resident_roles else ""
    raise PlanError(f"even leaf offload of every model needs more than {_size(room)} of VRAM ({_size((fixed or 1) * activation_bytes)} of activations{kept}): "
                    "lower the resolution, frames or particles, or use the preview preset")


def _batch_reason(batch: int, particles: int, particle_bytes: int, fixed: bool) -> str:
    why = "max_batch requested" if fixed else "the fewest equal micro-batches that fit beside the models"
    return f"{batch} of {particles} particles per forward ({why}; {_size(particle_bytes)} of activations each)"


def micro_batch_beside(models: list[ModelSize], placements: dict[str, RolePlan], particle_bytes: int, budget: Budget, particles: int) -> int:
    """Rule 9 alone, for placements an explicit ``offload`` named: :func:`micro_batch` in the
    room those placements leave (1 when not even one particle fits: the task asked for them)."""
    return micro_batch(particles, particle_bytes, budget.vram_free_bytes - budget.reserve_bytes - _sampling_vram(models, placements, 0))


def decode_plan(models: list[ModelSize], placements: dict[str, RolePlan], decode_bytes: int, budget: Budget, *, tiled_decode_bytes: int | None = None) -> DecodePlan:
    """Rule 7 for models placed by an explicit ``offload`` (no search): decode beside them,
    else free them first, else tiled after freeing; :class:`PlanError` when even that does
    not fit."""
    resident = _sampling_vram(models, placements, 0)
    return _decode(resident, decode_bytes, tiled_decode_bytes, budget.vram_free_bytes - budget.reserve_bytes, [])[0]


def _decode(resident_bytes: int, decode_bytes: int, tiled_bytes: int | None, room: int, reasons: list[str]) -> tuple[DecodePlan, int]:
    if resident_bytes + decode_bytes <= room:
        return DecodePlan(False, True, False), resident_bytes + decode_bytes
    if decode_bytes <= room:
        reasons.append(f"decode ({_size(decode_bytes)}) does not fit beside the models: free them first")
        return DecodePlan(False, True, True), decode_bytes
    if tiled_bytes is not None and tiled_bytes <= room:
        reasons.append(f"untiled decode needs {_size(decode_bytes)}: tiled decode ({_size(tiled_bytes)}) after freeing the models")
        return DecodePlan(True, True, True), tiled_bytes
    raise PlanError(f"VAE decode needs {_size(tiled_bytes or decode_bytes)} of {_size(room)}: lower the resolution or frames")


def _size(size_bytes: int) -> str:
    """Bytes for a message: GiB to one decimal, MiB below 1 GiB (small budgets stay readable)."""
    return f"{size_bytes / GiB:.1f} GiB" if abs(size_bytes) >= GiB else f"{size_bytes / 2**20:.1f} MiB"


def _host_message(host: int, budget: Budget, why: str) -> str:
    free = budget.ram_free_bytes + HOST_BASELINE_BYTES
    return (f"{why} needs {_size(host)} of host RAM (one offloaded copy of each streamed model plus the load-time copy) "
            f"but {_size(free)} are available: allow fp8 storage, add RAM, use a card with more VRAM, or use the preview preset")


# ---------------------------------------------------------------------------------------
# Jobs from configs (the runtimes plan with these), and the tasks' jobs at their default sizes


def flux_job_bytes(configs: dict[str, dict[str, Any]], height: int, width: int, text_tokens: int, conditioned: Collection[str] = ()) -> tuple[int, int, int]:
    """``(one particle's activations, decode, tiled decode)`` bytes of a FLUX job: the largest
    over the transformers ``configs`` (role -> config; hidden = heads · head dim, blocks =
    double + single) of a plain forward (:func:`flux_activation_bytes`) or, for the roles in
    ``conditioned``, an aligned pass (:func:`flux_conditioned_bytes`), on ``(H/16)(W/16)``
    image tokens; and one image's decode (:func:`vae_decode_bytes`). The FLUX runtime plans
    with exactly this, from the installed configs."""
    loader = "diffusers:FluxTransformer2DModel"
    tokens = (height // 16) * (width // 16)
    activation = 0
    for role, config in configs.items():
        hidden = config_value(loader, config, "num_attention_heads") * config_value(loader, config, "attention_head_dim")
        activation = max(activation, flux_activation_bytes(tokens, text_tokens, 1, hidden=hidden))
        if role in conditioned:
            blocks = config_value(loader, config, "num_layers") + config_value(loader, config, "num_single_layers")
            activation = max(activation, flux_conditioned_bytes(tokens, text_tokens, 1, hidden=hidden, blocks=blocks))
    return activation, vae_decode_bytes("flux", 1, height, width, False), vae_decode_bytes("flux", 1, height, width, True)


def wan_job_bytes(configs: dict[str, dict[str, Any]], frames: int, height: int, width: int, conditioned: Collection[str] = ()) -> tuple[int, int, int]:
    """``(one particle's activations, decode, tiled decode)`` bytes of a Wan job: the largest
    over the transformers ``configs`` (role -> config; hidden = heads · head dim, VACE hints
    from ``vace_layers``) of one forward (CFG runs as separate passes) or, for the roles in
    ``conditioned``, an aligned pass with both CFG passes (:func:`wan_conditioned_bytes`), on
    the latent ``((F-1)/4 + 1, H/8, W/8)``; and one video's decode (:func:`vae_decode_bytes`).
    The Wan runtime plans with exactly this, from the installed configs."""
    latent = ((frames - 1) // 4 + 1, height // 8, width // 8)
    activation = 0
    for role, config in configs.items():
        hidden, vace = config["num_attention_heads"] * config["attention_head_dim"], len(config.get("vace_layers") or ())
        activation = max(activation, wan_activation_bytes(*latent, 1, vace_layers=vace, hidden=hidden))
        if role in conditioned:
            activation = max(activation, wan_conditioned_bytes(*latent, 1, vace_layers=vace, hidden=hidden, blocks=config["num_layers"]))
    return activation, vae_decode_bytes("wan", frames, height, width, False), vae_decode_bytes("wan", frames, height, width, True)


def framepack_job_bytes(config: dict[str, Any], window: int, sections: int, height: int, width: int) -> tuple[int, int, int]:
    """``(one particle's activations, decode, tiled decode)`` bytes of a FramePack job: one
    section forward (:func:`framepack_activation_bytes`, hidden from the config or the class
    defaults; true CFG runs as a separate pass) and the decode of one whole video of
    ``1 + 4·C·W`` frames. The FramePack runtime plans with exactly this."""
    loader = "diffusers:HunyuanVideoFramepackTransformer3DModel"
    hidden = config_value(loader, config, "num_attention_heads") * config_value(loader, config, "attention_head_dim")
    frames = 1 + 4 * sections * window
    activation = framepack_activation_bytes(window, height // 8, width // 8, 1, hidden=hidden)
    return activation, vae_decode_bytes("framepack", frames, height, width, False), vae_decode_bytes("framepack", frames, height, width, True)


@dataclass(frozen=True)
class Job:
    """One task's job at full size, as :func:`plan` takes it: the sampling ``models``, one
    particle's activations (``particle_bytes``), the decode, the job's ``particles``, the
    roles of conditioned experts (kept resident, rule 8) and ``held_bytes`` of the device
    that models outside the plan hold (VQAScore's 7B beside regional FLUX: the task loads it
    before planning, so the runtime's budget already lacks it)."""

    models: list[ModelSize]
    particle_bytes: int
    decode_bytes: int
    tiled_decode_bytes: int
    particles: int
    conditioned: tuple[str, ...] = ()
    held_bytes: int = 0

    def plan(self, budget: Budget, *, allow_fp8: bool = True, max_batch: int | None = None) -> Plan:
        """:func:`plan` of this job on ``budget`` less :attr:`held_bytes`."""
        budget = replace(budget, vram_free_bytes=budget.vram_free_bytes - self.held_bytes)
        return plan(self.models, self.particle_bytes, self.decode_bytes, budget, alternating=len(self.models) > 1, allow_fp8=allow_fp8,
                    tiled_decode_bytes=self.tiled_decode_bytes, particles=self.particles, max_batch=max_batch, resident_roles=self.conditioned)


def _configs(roles: list[str]) -> dict[str, dict[str, Any]]:
    return {role: full_configs()[role][1] for role in roles}


def insertion_job(height: int = 1024, width: int = 1024, particles: int = 2, conditioned: tuple[str, ...] = ()) -> Job:
    """FLUX.1 Depth × Fill, T5 freed after encoding; ``conditioned``: the roles of the
    conditioned experts (e.g. Fill conditioned on Depth)."""
    roles = ["flux.transformer.depth", "flux.transformer.fill"]
    return Job([full_size(role) for role in roles], *flux_job_bytes(_configs(roles), height, width, 512, conditioned), particles, conditioned)


def sim2video_job(frames: int = 81, height: int = 480, width: int = 832, particles: int = 2, preview: bool = False, conditioned: tuple[str, ...] = ()) -> Job:
    """Wan VACE-14B × I2V-14B (preview: VACE-1.3B as both experts), CFG as separate passes."""
    roles = ["wan.transformer.vace.preview"] if preview else ["wan.transformer.vace", "wan.transformer.i2v"]
    return Job([full_size(role) for role in roles], *wan_job_bytes(_configs(roles), frames, height, width, conditioned), particles, conditioned)


def sim2video_ar_job(sections: int = 2, window: int = 9, height: int = 480, width: int = 832, particles: int = 2) -> Job:
    """FramePack (HunyuanVideo 13B) sections of ``window`` latent frames; the render
    Gaussian has no weights. Two sections of 9 are 73 frames (the most under 81)."""
    role = "framepack.transformer"
    return Job([full_size(role)], *framepack_job_bytes(full_configs()[role][1], window, sections, height, width), particles)


def regional_t2i_job(height: int = 1024, width: int = 1024, particles: int = 2) -> Job:
    """FLUX.1 [dev] for the global and region experts, Qwen2.5-VL-7B (VQAScore) held on the
    device beside it for the rewards."""
    roles = ["flux.transformer.dev"]
    return Job([full_size(role) for role in roles], *flux_job_bytes(_configs(roles), height, width, 512), particles, held_bytes=full_size("vqa.model").weight_bytes)


#: task -> its jobs at the default sizes (label, job), for :func:`plan_report`.
TASK_JOBS: dict[str, dict[str, Any]] = {
    "insertion": {"insertion 1024² P=2": insertion_job,
                  "insertion 1024² P=2, Fill conditioned on Depth": functools.partial(insertion_job, conditioned=("flux.transformer.fill",))},
    "regional_t2i": {"regional_t2i 1024² P=2 with VQAScore 7B": regional_t2i_job,
                     "regional_t2i 1024² P=32 with VQAScore 7B": functools.partial(regional_t2i_job, particles=32)},
    "sim2video": {"sim2video 832x480x81 P=2": sim2video_job, "preview 1.3B 832x480x81 P=2": functools.partial(sim2video_job, preview=True),
                  "sim2video 832x480x81 P=2, VACE conditioned on I2V": functools.partial(sim2video_job, conditioned=("wan.transformer.vace",))},
    "sim2video_ar": {"sim2video_ar 832x480x73 (2 sections of 9) P=2": sim2video_ar_job},
}


def plan_report(tasks: list[str] | None = None, cards_gib: tuple[float, ...] = (24, 48, 80, 141), rams_gib: tuple[float, ...] = (32, 64, 128)) -> str:
    """Text report of every job of ``tasks`` (default: all of :data:`TASK_JOBS`) over a grid
    of cards and host RAM, fp8 storage allowed and not: placements (resident, streamed), the
    particles per forward, the decode, the VRAM and host peaks with what is pinned, or the
    reason it is refused (``poe-backend models plan``)."""
    unknown = [task for task in tasks or () if task not in TASK_JOBS]
    if unknown:
        raise KeyError(f"no memory plan for task {unknown[0]!r}; planned tasks: {', '.join(TASK_JOBS)}")
    lines = []
    for task in tasks or list(TASK_JOBS):
        for name, make in TASK_JOBS[task].items():
            job = make()
            lines.append(f"{name}: weights {sum(m.weight_bytes for m in job.models) / GiB:.1f} GiB (fp8 {sum(m.fp8_weight_bytes for m in job.models) / GiB:.1f}), "
                         f"activations {job.particle_bytes / GiB:.2f} GiB per particle, decode {job.decode_bytes / GiB:.2f} GiB (tiled {job.tiled_decode_bytes / GiB:.2f})")
            for card in cards_gib:
                for ram in rams_gib:
                    for fp8 in (True, False):
                        try:
                            text = job.plan(Budget.nominal(card, ram), allow_fp8=fp8).describe()
                        except PlanError as error:
                            text = f"refused: {error}"
                        lines.append(f"  {card:>3g} GiB card, {ram:>3g} GiB RAM, fp8 {'on ' if fp8 else 'off'}: {text}")
    return "\n".join(lines)

"""Image tasks: insertion (FLUX.1 Depth x Fill) and regional_t2i (FLUX.1 [dev] regions x
VQAScore), with random weights in the real architectures.

Full size (CUDA): FLUX.1 transformers from the configs below (12B each, bf16), the FLUX VAE,
Qwen2.5-VL-7B for VQAScore, at 1024x1024 (4096 tokens). Prompt embeddings are random tensors
of the real shapes (T5-XXL 512x4096, CLIP-L pooled 768): text encoding runs once per job and
is not part of a sampler level. The VQA model stays resident under every offload preset (only
the FLUX transformers are offloaded). Tiny (CPU): the tiny preset's classes at 32x32.

The transformer and Qwen2.5-VL-7B configs are the planner's
(``poe_backend.runtime.planner.full_configs()``: the families' declarations); the VAE config was written from the
published ``config.json`` of black-forest-labs/FLUX.1-dev. Peak VRAM and host RSS are measured
from after the models are built (in bf16 directly on the device) and placed.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks.common import ForwardClock, Row, Settings, free, peak_host, peak_vram, random_model
from poe_backend.runtime.placement import apply_placement, placement_for_offload

FLUX_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=16,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
def run(settings: Settings) -> list[Row]:
    rows = []
    for task, bench in (("insertion", insertion), ("regional_t2i", regional)):
        if not settings.wants(task):
            continue
        for offload in settings.offloads:
            try:
                rows.append(bench(settings, offload))
            except Exception as error:  # e.g. out of memory under "none": a row, not a crash
                rows.append(Row(task, "failed", offload, "-", settings.particles, None, None, None, 0, f"{type(error).__name__}: {str(error)[:100]}"))
                free()
    return rows


def _dtype(settings: Settings) -> torch.dtype:
    return torch.bfloat16 if settings.full else torch.float32


def _size(settings: Settings) -> int:
    return 1024 if settings.full else 32


def _vae(settings: Settings):
    from diffusers import AutoencoderKL

    from poe_backend.families.flux import tiny as flux_tiny

    if settings.full:
        return random_model(lambda: AutoencoderKL(**FLUX_VAE), settings.device, _dtype(settings))
    return flux_tiny.vae().to(settings.device).eval().requires_grad_(False)


def _transformer(settings: Settings, in_channels: int):
    from diffusers import FluxTransformer2DModel

    from poe_backend.families.flux import tiny as flux_tiny

    if settings.full:
        from poe_backend.runtime.planner import full_configs

        config = {**full_configs()["flux.transformer.dev"][1], "in_channels": in_channels}
        return random_model(lambda: FluxTransformer2DModel(**config), settings.device, _dtype(settings))
    return flux_tiny.transformer(in_channels).to(settings.device).eval().requires_grad_(False)


def _prompt(settings: Settings, name: str):
    from poe_backend.families.flux.runtime import PromptEmbedding

    length, width, pooled = (512, 4096, 768) if settings.full else (16, 32, 32)
    generator = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, length, width, generator=generator).to(settings.device, _dtype(settings))
    return PromptEmbedding(name, embeds, torch.randn(1, pooled, generator=generator).to(settings.device, _dtype(settings)))


def _sample(settings: Settings, product, space, clock: ForwardClock):
    from poe_backend.sampling import sample_fkc
    from poe_backend.tasks.insertion import InsertionParams
    from poe_backend.sampling.schedules import flux_shift_mu, shifted_levels

    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(settings.particles, *space.event_shape, generator=generator).to(settings.device)
    levels = shifted_levels(settings.levels, flux_shift_mu(space.num_tokens), t_max=0.98)
    warm = product.evaluate(noise, 0.5)  # warm-up (kernels, allocator, lazy init), not timed
    product.log_potential(warm.x0, 0.5)
    product.nfe, clock.seconds, clock.calls = 0, 0.0, 0
    start = time.perf_counter()
    result = sample_fkc(product, noise, levels, generator=generator, langevin_steps=settings.langevin_steps, step_scale=InsertionParams().step_scale, metropolis=InsertionParams().metropolis)
    if str(settings.device).startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    timing = dict(seconds_per_forward=clock.seconds / max(clock.calls, 1), seconds_per_job=seconds)
    return result, seconds / (len(levels) - 1), 1.0 - clock.seconds / seconds, timing


def insertion(settings: Settings, offload: str) -> Row:
    """FLUX.1 Depth x Fill, FKC sampler, at 1024^2 (tiny: 32^2)."""
    from poe_backend.families.flux import runtime as flux
    from poe_backend.sampling import Factor, ProductOfExperts

    size, device = _size(settings), settings.device
    vae = _vae(settings)
    space = flux.FluxLatentSpace(size, size, preset="tiny", device=device, dtype=_dtype(settings), vae=vae)
    depth = np.full((size, size), 4.0, dtype=np.float32)
    depth[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 2.0
    mask = np.zeros((size, size), dtype=np.float32)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1.0
    plate = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    prompt = _prompt(settings, "insertion")
    depth_model, fill_model = _transformer(settings, 128), _transformer(settings, 384)
    clock = ForwardClock(device)
    for model in (depth_model, fill_model):
        apply_placement(model, placement_for_offload(offload), device)
    with peak_vram(device) as peak, peak_host() as host:  # after building and placing
        experts = [
            flux.FluxExpert(depth_model, space, prompt, guidance=10.0, condition=flux.depth_condition(space, depth), name="depth"),
            flux.FluxExpert(fill_model, space, prompt, guidance=30.0, condition=flux.fill_condition(space, plate, mask), name="fill"),
        ]
        product = ProductOfExperts([Factor(clock.wrap(expert)) for expert in experts])
        result, per_level, outside, timing = _sample(settings, product, space, clock)
        space.decode(result.particles)
        peak_gib, host_gib = peak(), host()
    nfe = result.nfe
    del depth_model, fill_model, vae, experts, product, result
    free()
    return Row("insertion", "depth x fill (fkc)", offload, f"{size}x{size}", settings.particles, per_level, peak_gib, outside, nfe, peak_host_gib=host_gib, **timing)


def _vqa_components(settings: Settings):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    from poe_backend.families.vqascore import tiny as vqascore_tiny

    tokenizer = vqascore_tiny.tokenizer()
    ids = dict(zip(vqascore_tiny.SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(vqascore_tiny.SPECIAL_TOKENS)))
    if not settings.full:
        model = vqascore_tiny.model(ids, len(tokenizer)).to(settings.device).eval().requires_grad_(False)
        return model, vqascore_tiny.image_processor(), tokenizer
    from poe_backend.runtime.planner import full_configs

    config = Qwen2_5_VLConfig(
        **full_configs()["vqa.model"][1],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    model = random_model(lambda: Qwen2_5_VLForConditionalGeneration(config), settings.device, _dtype(settings))
    return model, Qwen2VLImageProcessorPil(), tokenizer


def regional(settings: Settings, offload: str) -> Row:
    """Global + 2 regional FLUX.1 [dev] experts (one shared transformer) x VQAScore."""
    from poe_backend.families.flux import runtime as flux
    from poe_backend.families.vqascore.scorer import VQAScorer, VQAScoreReward
    from poe_backend.sampling import Factor

    size, device = _size(settings), settings.device
    vae = _vae(settings)
    space = flux.FluxLatentSpace(size, size, preset="tiny", device=device, dtype=_dtype(settings), vae=vae)
    transformer = _transformer(settings, 64)
    components = _vqa_components(settings)
    scorer = VQAScorer(device=device, dtype=_dtype(settings), max_pixels=448 * 448 if settings.full else 56 * 56, components=components)
    clock = ForwardClock(device)
    boxes = [[0, 0, size // 2, size], [size // 2, size // 4, size, 3 * size // 4]]
    global_map, region_maps = flux.regional_weights(boxes, size, size, region_strength=0.8)
    apply_placement(transformer, placement_for_offload(offload), device)
    with peak_vram(device) as peak, peak_host() as host:  # after building and placing
        maps = [global_map] + region_maps
        experts = [flux.FluxExpert(transformer, space, _prompt(settings, f"p{i}"), guidance=3.5, name=f"e{i}") for i in range(3)]
        factors = [Factor(clock.wrap(expert), weights.to(device)) for expert, weights in zip(experts, maps)]
        reward = VQAScoreReward(scorer, space.decode, ["a park", "a dog", "a cat"])
        product = flux.RegionalProduct(factors, [reward])
        result, per_level, outside, timing = _sample(settings, product, space, clock)
        peak_gib, host_gib = peak(), host()
    nfe = result.nfe
    del transformer, vae, components, experts, factors, reward, product, scorer, result
    free()
    return Row("regional_t2i", "3 regional x vqascore (fkc)", offload, f"{size}x{size}", settings.particles, per_level, peak_gib, outside, nfe, "VQA model resident", peak_host_gib=host_gib, **timing)

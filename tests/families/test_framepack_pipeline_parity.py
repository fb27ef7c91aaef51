"""FramePack section experts, integrated section by section with Euler steps, reproduce
diffusers' ``HunyuanVideoFramepackPipeline`` (tiny preset, two sections of one latent frame,
two steps each): history packing, indices, guidance·1000 and σ·1000 are the pipeline's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from poe_backend.runtime.cache import MODEL_CACHE
from poe_backend.families.framepack.runtime import FramePackRuntime
from poe_backend.sampling import Factor, ProductOfExperts, sample_summed_velocity
from tests.video_support import tiny_data_dir  # noqa: F401 (fixture)

SIZE, SECTIONS, WINDOW, GUIDANCE = 32, 2, 1, 6.0


@pytest.mark.parametrize("sampling_type", ["inverted", "vanilla"])
def test_sections_match_the_framepack_pipeline(tiny_data_dir, sampling_type) -> None:  # noqa: F811
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoFramepackPipeline

    pixels = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    image_tensor = torch.from_numpy(pixels.astype(np.float32) / 255.0).permute(2, 0, 1)
    runtime = FramePackRuntime(sampling_type, WINDOW, SECTIONS, SIZE, SIZE, preset="tiny")
    runtime.plan()
    prompt = runtime.encode_prompts(["a box slides"])[0]
    image_embeds = runtime.encode_image(image_tensor)
    pipeline = HunyuanVideoFramepackPipeline(
        text_encoder=None, tokenizer=None, transformer=runtime.transformer, vae=runtime.vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=None, tokenizer_2=None, image_encoder=MODEL_CACHE.load("framepack.image_encoder", "tiny"), feature_extractor=MODEL_CACHE.load("framepack.feature_extractor", "tiny"),
    )
    reference = pipeline(
        image=image, prompt_embeds=prompt.embeds, pooled_prompt_embeds=prompt.pooled, prompt_attention_mask=prompt.attention_mask,
        height=SIZE, width=SIZE, num_frames=SECTIONS, latent_window_size=WINDOW, num_inference_steps=2, guidance_scale=GUIDANCE,
        generator=torch.Generator().manual_seed(3), output_type="latent", sampling_type=
        "inverted_anti_drifting" if sampling_type == "inverted" else "vanilla",
    ).frames[-1]
    sigmas = pipeline.scheduler.sigmas.tolist()

    # The pipeline samples the image latent from the VAE posterior with the same generator.
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        posterior = runtime.vae.encode(image_tensor[None, :, None] * 2 - 1).latent_dist
        image_latents = posterior.sample(generator=generator) * runtime.vae.config.scaling_factor
    chunks = []
    for index in range(SECTIONS):
        noise = torch.randn((1, 4, WINDOW, SIZE // 8, SIZE // 8), generator=generator)
        expert = runtime.section_expert(index, chunks, image_latents, prompt, image_embeds, GUIDANCE)
        chunks.append(sample_summed_velocity(ProductOfExperts([Factor(expert)]), noise, sigmas, generator=torch.Generator()).particles)
    ours = runtime.assemble(image_latents, chunks)
    torch.testing.assert_close(ours, reference.float(), atol=1e-4, rtol=1e-4)

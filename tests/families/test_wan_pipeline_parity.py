"""Our Wan experts integrated with Euler steps reproduce diffusers' own pipelines (tiny
preset, two steps, true CFG): the channel layout, the σ·1000 timestep, the VACE control
context and the guidance combination are the pipelines' exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from poe_backend.runtime.cache import MODEL_CACHE

from poe_backend.families.wan import experts as wan
from poe_backend.families.wan.runtime import WanRuntime
from poe_backend.sampling import Factor, ProductOfExperts, sample_summed_velocity
from tests.video_support import tiny_data_dir  # noqa: F401 (fixture)

NUM_FRAMES, SIZE, GUIDANCE = 5, 32, 4.0


@pytest.fixture(scope="module")
def runtime(tiny_data_dir):  # noqa: F811
    runtime = WanRuntime(["vace", "i2v"], NUM_FRAMES, SIZE, SIZE, preset="tiny", device="cpu")
    runtime.plan()
    return runtime


def _image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def _euler(expert, noise: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    return sample_summed_velocity(ProductOfExperts([Factor(expert)]), noise, sigmas, generator=torch.Generator().manual_seed(0)).particles


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=3.0)


def test_i2v_expert_matches_wan_image_to_video_pipeline(runtime) -> None:
    from diffusers import WanImageToVideoPipeline

    image = _image(0)
    positive, negative = runtime.encode_prompts(["a red ball", "blurry"])
    image_embeds = runtime.encode_image(_tensor(image))
    noise = torch.randn((1, *wan.latent_shape(NUM_FRAMES, SIZE, SIZE)), generator=torch.Generator().manual_seed(1))
    pipeline = WanImageToVideoPipeline(
        tokenizer=runtime.tokenizer, text_encoder=None, vae=runtime.vae, scheduler=_scheduler(),
        image_processor=MODEL_CACHE.load("wan.image_processor", "tiny"), image_encoder=MODEL_CACHE.load("wan.image_encoder", "tiny"), transformer=runtime.transformer("i2v"),
    )
    reference = pipeline(
        image=image, prompt_embeds=positive, negative_prompt_embeds=negative, height=SIZE, width=SIZE,
        num_frames=NUM_FRAMES, num_inference_steps=2, guidance_scale=GUIDANCE, latents=noise.clone(), output_type="latent",
    ).frames
    sigmas = pipeline.scheduler.sigmas.tolist()
    expert = runtime.i2v_expert(runtime.i2v_condition(_tensor(image)), image_embeds, positive, negative, GUIDANCE)
    torch.testing.assert_close(_euler(expert, noise, sigmas), reference, atol=1e-4, rtol=1e-4)


def test_vace_depth_expert_matches_wan_vace_pipeline(runtime) -> None:
    from diffusers import WanVACEPipeline

    depth = [_image(10 + index) for index in range(NUM_FRAMES)]
    positive, negative = runtime.encode_prompts(["a red ball", "blurry"])
    noise = torch.randn((1, *wan.latent_shape(NUM_FRAMES, SIZE, SIZE)), generator=torch.Generator().manual_seed(2))
    pipeline = WanVACEPipeline(tokenizer=runtime.tokenizer, text_encoder=None, vae=runtime.vae, scheduler=_scheduler(), transformer=runtime.transformer("vace"))
    reference = pipeline(
        video=depth, prompt_embeds=positive, negative_prompt_embeds=negative, height=SIZE, width=SIZE, num_frames=NUM_FRAMES,
        num_inference_steps=2, guidance_scale=GUIDANCE, conditioning_scale=0.7, latents=noise.clone(), output_type="latent",
    ).frames
    sigmas = pipeline.scheduler.sigmas.tolist()
    control = runtime.vace_control(*wan.depth_control_inputs(torch.stack([_tensor(image) for image in depth])))
    expert = runtime.vace_expert(control, positive, negative, GUIDANCE, control_scale=0.7)
    torch.testing.assert_close(_euler(expert, noise, sigmas), reference, atol=1e-4, rtol=1e-4)

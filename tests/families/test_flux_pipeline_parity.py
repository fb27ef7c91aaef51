"""Our FLUX experts against diffusers' own pipelines (tiny components, 2 steps at 32x48):
every transformer call of ``FluxPipeline``, ``FluxControlPipeline`` (Depth) and
``FluxFillPipeline`` is replayed through :class:`FluxExpert` with the same particles, time
and condition channels, and must give the same velocity. This pins the wiring: σ passed
as the timestep, raw distilled guidance, ids, pooled/T5 embeddings, channel concatenation.
The pipelines *sample* the VAE posterior for their conditions where ours take its mode, so
the posterior's ``sample`` is patched to its mode here; then the condition channels
(Depth's control latents, Fill's masked-image latents + packed mask) must match ours too."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxControlPipeline, FluxFillPipeline, FluxPipeline
from PIL import Image

from poe_backend.families.flux import runtime as flux

from poe_backend.runtime.cache import MODEL_CACHE
from poe_backend.families.flux.runtime import PromptEmbedding

HEIGHT, WIDTH = 32, 48


def scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)


@pytest.mark.parametrize(("kind", "pipeline_class", "guidance"), [("dev", FluxPipeline, 3.5), ("depth", FluxControlPipeline, 10.0), ("fill", FluxFillPipeline, 30.0)])
def test_expert_matches_every_pipeline_transformer_call(kind, pipeline_class, guidance, monkeypatch):
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
    space = flux.FluxLatentSpace(HEIGHT, WIDTH, preset="tiny", max_sequence_length=16)
    transformer = MODEL_CACHE.load(flux.TRANSFORMER_ROLES[kind], "tiny")
    components = {name: MODEL_CACHE.load(f"flux.{name}", "tiny") for name in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")}
    pipeline = pipeline_class(scheduler=scheduler(), vae=space.vae, transformer=transformer, **components)
    generator = torch.Generator().manual_seed(0)
    embeds, pooled = torch.randn(1, 16, 32, generator=generator), torch.randn(1, 32, generator=generator)
    calls = []

    def record(module, args, kwargs, output):
        calls.append((kwargs["hidden_states"].clone(), float(kwargs["timestep"][0]), output[0].clone()))

    handle = transformer.register_forward_hook(record, with_kwargs=True)
    pixels = np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[8:24, 16:40] = 255
    image = Image.fromarray(pixels)
    extra = {"depth": {"control_image": image}, "fill": {"image": image, "mask_image": Image.fromarray(mask)}}.get(kind, {})
    try:
        pipeline(
            prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=HEIGHT, width=WIDTH, num_inference_steps=2, guidance_scale=guidance,
            output_type="latent", generator=generator, max_sequence_length=16, **extra,
        )
    finally:
        handle.remove()
    assert len(calls) == 2
    ours = {"depth": lambda: space.encode_image(flux.image_tensor(pixels)), "fill": lambda: flux.fill_condition(space, pixels, mask)}
    if kind in ours:
        assert torch.allclose(calls[0][0][:, :, 64:], ours[kind](), atol=1e-5)
    prompt = PromptEmbedding("p", embeds, pooled)
    for hidden, t, expected in calls:
        condition = hidden[:, :, 64:] if hidden.shape[-1] > 64 else None
        expert = flux.FluxExpert(transformer, space, prompt, guidance=guidance, condition=condition)
        assert 0.0 < t <= 1.0  # the pipeline passes sigma, as our t
        assert torch.allclose(expert.velocity(hidden[:, :, :64], t), expected, atol=1e-5)

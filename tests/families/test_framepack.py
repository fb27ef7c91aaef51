"""FramePack per-section expert with the tiny preset: the pipeline's section conditioning,
velocities, history dependence, resampling, and the product with the render Gaussian."""

from __future__ import annotations

import pytest
import torch

from poe_backend.families.framepack import experts as fp
from poe_backend.models import lookup
from poe_backend.models import specs
from poe_backend.families.framepack.runtime import FramePackRuntime
from poe_backend.runtime.cache import MODEL_CACHE
from poe_backend.families.analytic.render_gaussian import RenderGaussianExpert
from poe_backend.sampling import Factor, ProductOfExperts, sample_annealed_langevin
from poe_backend.sampling.schedules import linear_levels
from tests.video_support import SpyExpert, tiny_data_dir  # noqa: F401 (fixture)

WINDOW, SECTIONS, PARTICLES = 1, 2, 2


def _runtime(sampling_type="inverted", **options) -> FramePackRuntime:
    runtime = FramePackRuntime(sampling_type, WINDOW, SECTIONS, 32, 32, preset="tiny", **options)
    runtime.plan()
    return runtime


@pytest.fixture(scope="module")
def components(tiny_data_dir):  # noqa: F811
    return _runtime()


@pytest.fixture(scope="module")
def encoded(components):
    generator = torch.Generator().manual_seed(0)
    video = torch.rand(1, 3, fp.num_pixel_frames(SECTIONS, WINDOW), 32, 32, generator=generator) * 2 - 1
    return {
        "latents": components.encode_video(video),
        "prompt": components.encode_prompts(["a box slides"])[0],
        "image_embeds": components.encode_image((video[0, :, 0] + 1) / 2),
    }


def _expert(components, encoded, generation_index, history, sampling_type="inverted"):
    image = encoded["latents"][:, :, :1].expand(PARTICLES, -1, -1, -1, -1)
    runtime = components if sampling_type == components.sampling_type else _runtime(sampling_type)
    return runtime.section_expert(generation_index, history, image, encoded["prompt"], encoded["image_embeds"], 10.0)


def _section(seed: int) -> torch.Tensor:
    return torch.randn(PARTICLES, 4, WINDOW, 4, 4, generator=torch.Generator().manual_seed(seed))


def test_video_latent_layout(components, encoded) -> None:
    assert fp.num_pixel_frames(SECTIONS, WINDOW) == 9 and fp.num_pixel_frames(2, 9) == 73
    assert encoded["latents"].shape == (1, 4, 1 + SECTIONS * WINDOW, 4, 4)
    decoded = components.decode(encoded["latents"])
    assert decoded.shape == (1, 9, 3, 32, 32) and decoded.min() >= 0 and decoded.max() <= 1


def test_section_conditioning_matches_the_pipeline_layout() -> None:
    image = torch.zeros(1, 4, 1, 2, 2)
    sections = [torch.full((1, 4, 9, 2, 2), float(i + 1)) for i in range(3)]
    # inverted, 3 sections, step 1 (time section 1): padding 1·9, history = step 0's section
    inverted = fp.section_conditioning(image, sections[:1], 1, 3, 9, "inverted")
    assert inverted.indices_latents.tolist() == list(range(10, 19))
    assert inverted.indices_latents_clean.tolist() == [0, 19]
    assert torch.all(inverted.latents_clean[:, :, 1] == 1)  # newest generated, next in time
    assert inverted.latents_history_2x.shape[2] == 2 and inverted.latents_history_4x.shape[2] == 16
    # vanilla, step 2: 1x history = last frame of section 1, 2x = section 1's frames 6, 7
    vanilla = fp.section_conditioning(image, sections[:2], 2, 3, 9, "vanilla")
    assert vanilla.indices_latents.tolist() == list(range(20, 29))
    assert torch.all(vanilla.latents_clean[:, :, 1] == 2) and torch.all(vanilla.latents_history_2x == 2)
    # the 4x history: the first frame's latent (0), section 0 (1), then section 1's start (2)
    assert vanilla.latents_history_4x[0, 0, :, 0, 0].tolist() == [0.0] + [1.0] * 9 + [2.0] * 6


@pytest.mark.parametrize("sampling_type", ["inverted", "vanilla"])
def test_velocity_shape_determinism_and_history_dependence(components, encoded, sampling_type) -> None:
    x = _section(1)
    first = _expert(components, encoded, 1, [_section(2)], sampling_type)
    other = _expert(components, encoded, 1, [_section(3)], sampling_type)
    velocity = first.velocity(x, 0.6)
    assert velocity.shape == x.shape and torch.isfinite(velocity).all()
    torch.testing.assert_close(velocity, first.velocity(x, 0.6))
    assert not torch.allclose(velocity, other.velocity(x, 0.6))


def test_reindex_follows_resampling(components, encoded) -> None:
    history = _section(4)
    expert = _expert(components, encoded, 1, [history])
    x = _section(5)
    before = expert.velocity(x, 0.5)
    expert.reindex(torch.tensor([1, 1]))
    after = expert.velocity(x[[1, 1]], 0.5)
    torch.testing.assert_close(after[0], before[1], atol=1e-5, rtol=1e-5)


def test_every_expert_called_at_every_langevin_step(components, encoded) -> None:
    framepack = SpyExpert(_expert(components, encoded, 0, []))
    gaussian = SpyExpert(RenderGaussianExpert(encoded["latents"][0, :, 1 : 1 + WINDOW], 0.5))
    steps = []
    product = ProductOfExperts([Factor(framepack), Factor(gaussian)])
    sample_annealed_langevin(product, _section(6), linear_levels(3, t_max=0.9), generator=torch.Generator().manual_seed(0), langevin_steps=2, callback=steps.append)
    assert framepack.calls == gaussian.calls and len(framepack.calls) == len(steps)


def test_missing_weights_name_the_repo(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("POE_DATA_DIR", str(tmp_path))
    with pytest.raises(specs.MissingWeights, match="lllyasviel/FramePackI2V_HY"):
        FramePackRuntime("inverted", WINDOW, SECTIONS, 32, 32, preset="default")
    with pytest.raises(specs.MissingWeights, match="lllyasviel/FramePack_F1_I2V_HY_20250503"):
        FramePackRuntime("vanilla", WINDOW, SECTIONS, 32, 32, preset="default")


def test_layout_puts_generated_sections_in_time_order_and_slices_renders(components) -> None:
    """Inverted sampling makes the last time section first: chunk 0 lands at the end of the
    assembled latent, and the render slice of chunk 0 is the last section's frames."""
    image = torch.zeros(1, 4, 1, 4, 4)
    chunks = [torch.full((1, 4, WINDOW, 4, 4), float(index + 1)) for index in range(SECTIONS)]
    assembled = components.assemble(image, chunks)
    assert assembled.shape == (1, 4, 1 + SECTIONS * WINDOW, 4, 4)
    assert assembled[0, 0, :, 0, 0].tolist() == [0.0, 2.0, 1.0]
    renders = torch.arange(1 + SECTIONS * WINDOW, dtype=torch.float32).view(1, -1, 1, 1).expand(4, -1, 4, 4)
    assert components.render_section(renders, 0)[0, :, 0, 0].tolist() == [2.0]
    assert _runtime("vanilla").render_section(renders, 0)[0, :, 0, 0].tolist() == [1.0]


def test_prompt_embeddings_are_cached_across_jobs_without_the_text_encoders(components, monkeypatch) -> None:
    """A repeated prompt never loads Llama/CLIP-L (a new runtime, as the next job makes);
    a new prompt loads them and releases them afterwards. Different prompts differ (the
    tiny tokenizer's bare template keeps the prompt inside the sequence)."""
    first = components.encode_prompts(["a cached prompt"])[0]
    loads = []
    original = MODEL_CACHE.load
    monkeypatch.setattr(MODEL_CACHE, "load", lambda role, *args, **kwargs: loads.append(role) or original(role, *args, **kwargs))
    original_encoders = MODEL_CACHE.load_encoders  # encoders load together, through one room check
    monkeypatch.setattr(MODEL_CACHE, "load_encoders", lambda roles, *args, **kwargs: loads.extend(roles) or original_encoders(roles, *args, **kwargs))
    again = FramePackRuntime("inverted", WINDOW, SECTIONS, 32, 32, preset="tiny").encode_prompts(["a cached prompt"])[0]
    assert not [role for role in loads if "text_encoder" in role]
    torch.testing.assert_close(first.embeds, again.embeds)
    torch.testing.assert_close(first.pooled, again.pooled)
    other = components.encode_prompts(["another prompt entirely"])[0]
    assert "framepack.text_encoder" in loads and not torch.allclose(first.embeds, other.embeds)
    encoders = {str(lookup.resolve(role, "tiny")) for role in ("framepack.text_encoder", "framepack.text_encoder_2")}
    assert not encoders & set(MODEL_CACHE.loaded_models())  # this family's (another test may hold FLUX's)


def test_prompt_template_follows_the_tokenizer() -> None:
    """The Llama-3 chat template where the tokenizer has its header tokens, the bare prompt
    otherwise; no preset name is consulted."""
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_framepack import DEFAULT_PROMPT_TEMPLATE

    from poe_backend.families.wan.tiny import character_tokenizer

    plain = character_tokenizer(256)
    assert fp.prompt_template(plain) == fp.BARE_TEMPLATE
    plain.add_special_tokens({"additional_special_tokens": list(fp.LLAMA3_HEADER_TOKENS)})
    assert fp.prompt_template(plain) is DEFAULT_PROMPT_TEMPLATE


def test_the_decode_plan_frees_the_transformer_when_it_says_so(tiny_data_dir, monkeypatch) -> None:  # noqa: F811
    from poe_backend.runtime import planner

    monkeypatch.setattr(planner, "vae_decode_bytes", lambda family, frames, height, width, tiled: planner.GiB // 8 if tiled else 8 * planner.GiB)
    runtime = _runtime(budget=planner.Budget(vram_free_bytes=2 * planner.GiB, ram_free_bytes=2**34))
    assert runtime.job_plan.decode.free_transformers and runtime.job_plan.decode.tiled
    assert runtime.transformer is not None and any(path.endswith("transformer") for path in MODEL_CACHE.loaded_models())
    runtime.decode(torch.zeros(1, *runtime.chunk_shape[:1], 1 + SECTIONS * WINDOW, 4, 4))
    assert not any(path.endswith("transformer") for path in MODEL_CACHE.loaded_models()) and runtime.vae.use_tiling


def test_micro_batches_take_their_own_rows_of_the_history(components, encoded, monkeypatch) -> None:
    """A budget with room for the transformer and 2 particles' activations: P = 5 runs as
    2 + 2 + 1 (the runtime's section experts get the plan's micro-batch), each micro-batch
    with its own particles' history, giving the velocities of one batch of 5; a velocity
    for another particle count than the history's is refused."""
    from poe_backend.runtime import planner

    monkeypatch.setattr(planner, "vae_decode_bytes", lambda *args, **kwargs: 0)
    config = planner.installed_config("framepack.transformer", "tiny")
    particle = planner.framepack_job_bytes(config, WINDOW, SECTIONS, 32, 32)[0]
    weights = planner.installed_size("framepack.transformer", "tiny").weight_bytes
    runtime = _runtime(budget=planner.Budget(vram_free_bytes=planner.GiB + weights + 2 * particle, ram_free_bytes=2**34))
    assert runtime.plan(particles=5).micro_batch == 2
    image = encoded["latents"][:, :, :1].expand(5, -1, -1, -1, -1)
    history = [torch.randn(5, 4, WINDOW, 4, 4, generator=torch.Generator().manual_seed(12))]  # a different history per particle
    expert = runtime.section_expert(1, history, image, encoded["prompt"], encoded["image_embeds"], 10.0)
    sizes = []
    handle = expert.transformer.register_forward_pre_hook(lambda module, args, kwargs: sizes.append(kwargs["hidden_states"].shape[0]), with_kwargs=True)
    x = torch.randn(5, 4, WINDOW, 4, 4, generator=torch.Generator().manual_seed(13))
    velocity = expert.velocity(x, 0.6)
    handle.remove()
    assert sizes == [2, 2, 1] and expert.forward_count == 1
    whole = fp.FramePackSectionExpert(expert.transformer, expert.conditioning, encoded["prompt"], encoded["image_embeds"], 10.0)
    torch.testing.assert_close(velocity, whole.velocity(x, 0.6), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="x has 2 particles, the section conditioning 5"):
        expert.velocity(x[:2], 0.6)
    MODEL_CACHE.clear()

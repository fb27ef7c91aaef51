"""Wan2.1 experts with the tiny preset: conditioning shapes, velocities, guidance,
composition, and the sampler calling every expert at every step."""

from __future__ import annotations

import pytest
import torch

from poe_backend.experts import registry, wan, wan_tiny
import math

from poe_backend.sampling import Factor, ProductOfExperts, sample_annealed_langevin, sample_fkc, sample_summed_velocity
from poe_backend.sampling.schedules import linear_levels, shifted_levels
from tests.video_support import SpyExpert, tiny_data_dir  # noqa: F401 (fixture)

NUM_FRAMES, SIZE = 5, 32


@pytest.fixture(scope="module")
def components(tiny_data_dir):  # noqa: F811
    return wan.load_wan("tiny", device="cpu")


@pytest.fixture(scope="module")
def conditions(components):
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, SIZE, SIZE, generator=generator)
    depth = torch.rand(NUM_FRAMES, 1, SIZE, SIZE, generator=generator).expand(-1, 3, -1, -1)
    positive, negative = components.encode_prompt("a ball rolls", "")
    return {
        "image": image,
        "depth": depth,
        "positive": positive,
        "negative": negative,
        "image_embeds": components.encode_image(image),
        "i2v_condition": components.i2v_condition(image, NUM_FRAMES),
        "depth_control": wan.vace_depth_control(components, depth),
        "first_frame_control": wan.vace_first_frame_control(components, image, NUM_FRAMES),
    }


def _noise(seed: int = 1, particles: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((particles, *wan.latent_shape(NUM_FRAMES, SIZE, SIZE)), generator=generator)


def test_latent_shape_and_size_checks() -> None:
    assert wan.latent_shape(81, 480, 832) == (16, 21, 60, 104)
    with pytest.raises(ValueError, match="4k\\+1"):
        wan.latent_shape(80, 480, 832)
    with pytest.raises(ValueError, match="divisible by 16"):
        wan.latent_shape(81, 480, 830)


def test_conditioning_shapes(components, conditions) -> None:
    latent = wan.latent_shape(NUM_FRAMES, SIZE, SIZE)
    assert conditions["positive"].shape == (1, 512, wan_tiny.TINY_TEXT_DIM)
    assert conditions["i2v_condition"].shape == (1, 20, *latent[1:])
    assert conditions["depth_control"].shape == (1, 96, *latent[1:])
    # I2V mask: 4 channels, all 1 on latent frame 0 (the given image), 0 after.
    mask = conditions["i2v_condition"][0, :4]
    assert torch.all(mask[:, 0] == 1) and torch.all(mask[:, 1:] == 0)


def test_vace_masks(components, conditions) -> None:
    """Depth: every latent frame generated. First frame: diffusers' resize marks latent
    frame 0 'generate' too (MODELS.md's flag); latent_mask='exact' keeps it."""
    assert torch.all(conditions["depth_control"][0, 32:] == 1)
    resized = conditions["first_frame_control"][0, 32:]
    assert torch.all(resized == 1)
    exact = wan.vace_first_frame_control(components, conditions["image"], NUM_FRAMES, latent_mask="exact")[0, 32:]
    assert torch.all(exact[:, 0] == 0) and torch.all(exact[:, 1:] == 1)
    # The first frame is in the inactive latents either way.
    torch.testing.assert_close(conditions["first_frame_control"][:, :32], wan.vace_first_frame_control(components, conditions["image"], NUM_FRAMES, latent_mask="exact")[:, :32])


def test_vae_round_trip_shapes_and_range(components) -> None:
    video = torch.rand(1, 3, NUM_FRAMES, SIZE, SIZE) * 2 - 1
    latents = components.encode_video(video)
    assert latents.shape == (1, *wan.latent_shape(NUM_FRAMES, SIZE, SIZE))
    decoded = components.decode_latents(latents)
    assert decoded.shape == video.shape
    assert decoded.min() >= -1 and decoded.max() <= 1


def test_i2v_velocity_shape_determinism_and_guidance(components, conditions) -> None:
    make = lambda guidance: wan.WanI2VExpert(components.i2v_transformer, conditions["i2v_condition"], conditions["image_embeds"], conditions["positive"], conditions["negative"], guidance)
    x = _noise()
    guided, unguided = make(4.0), make(1.0)
    velocity = guided.velocity(x, 0.7)
    assert velocity.shape == x.shape and torch.isfinite(velocity).all()
    torch.testing.assert_close(velocity, guided.velocity(x, 0.7))
    assert guided.forward_count == 4
    conditional = unguided.velocity(x, 0.7)
    assert unguided.forward_count == 1
    unconditional = wan.WanI2VExpert(components.i2v_transformer, conditions["i2v_condition"], conditions["image_embeds"], conditions["negative"], None, 1.0).velocity(x, 0.7)
    torch.testing.assert_close(velocity, unconditional + 4.0 * (conditional - unconditional), atol=1e-5, rtol=1e-4)


def test_vace_velocity_depends_on_control(components, conditions) -> None:
    x = _noise()
    depth = wan.WanVACEExpert(components.vace_transformer, conditions["depth_control"], conditions["positive"], conditions["negative"], 3.0)
    first = wan.WanVACEExpert(components.vace_transformer, conditions["first_frame_control"], conditions["positive"], conditions["negative"], 3.0)
    off = wan.WanVACEExpert(components.vace_transformer, conditions["depth_control"], conditions["positive"], conditions["negative"], 3.0, control_scale=0.0)
    v_depth, v_first, v_off = depth.velocity(x, 0.5), first.velocity(x, 0.5), off.velocity(x, 0.5)
    assert v_depth.shape == x.shape
    assert not torch.allclose(v_depth, v_first)
    assert not torch.allclose(v_depth, v_off)
    assert depth.transformer is first.transformer  # shared mode: one model, two experts


def test_product_of_depth_expert_with_itself_is_doubled_weight(components, conditions) -> None:
    """Π = p·p and p² give the same scores, hence the same FKC run (the weight increment
    ½Δu(‖2s‖² − 2‖s‖²) is the same for both)."""
    expert = wan.WanVACEExpert(components.vace_transformer, conditions["depth_control"], conditions["positive"], conditions["negative"], 2.0)
    levels, results = linear_levels(4, t_max=0.95), []
    for factors in ([Factor(expert), Factor(expert)], [Factor(expert, 2.0)]):
        generator = torch.Generator().manual_seed(5)
        results.append(sample_fkc(ProductOfExperts(factors), _noise(), levels, generator=generator, langevin_steps=1))
    torch.testing.assert_close(results[0].particles, results[1].particles, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(results[0].log_weights, results[1].log_weights, atol=1e-3, rtol=1e-3)


def test_every_expert_called_at_every_langevin_step(components, conditions) -> None:
    i2v = SpyExpert(wan.WanI2VExpert(components.i2v_transformer, conditions["i2v_condition"], conditions["image_embeds"], conditions["positive"], None, 1.0))
    depth = SpyExpert(wan.WanVACEExpert(components.vace_transformer, conditions["depth_control"], conditions["positive"], None, 1.0))
    steps = []
    levels = linear_levels(3, t_max=0.9)
    sample_annealed_langevin(ProductOfExperts([Factor(i2v), Factor(depth)]), _noise(), levels, generator=torch.Generator().manual_seed(0), langevin_steps=2, callback=steps.append)
    assert i2v.calls == depth.calls
    # one evaluation at the start and one per observed step (transport + each Langevin step),
    # except the last step to t=0: it is the clean prediction of the last level's evaluation
    assert len(i2v.calls) == len(steps) and steps[-1].t == 0.0
    assert [progress.t for progress in steps[:-1]] == i2v.calls[1:]


def test_missing_weights_name_the_repo(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("POE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(registry.MissingWeights, match="Wan-AI/Wan2.1-VACE-14B-diffusers"):
        wan.load_wan("default", i2v=False)
    with pytest.raises(registry.MissingWeights, match="Wan-AI/Wan2.1-VACE-1.3B-diffusers"):
        wan.load_wan("preview", i2v=False)
    assert "Fun" in next(iter(wan.UNSUPPORTED_MODELS))


def test_ddim_inversion_then_regeneration_reconstructs_within_a_first_order_error(components, conditions) -> None:
    """Invert a VAE-encoded clip with the expert's own ODE (guidance 1), regenerate with the
    same expert and prompt: the relative RMS error is first order in the step (measured
    0.40 at 8 levels, 0.090 at 32, 0.044 at 64 on the tiny VACE), so it must be below 0.5
    at 8 levels, below 0.12 at 32, and fall by at least 3x from 8 to 32 levels."""
    video = torch.rand(1, 3, NUM_FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(4)) * 2 - 1
    source = components.encode_video(video)
    expert = wan.WanVACEExpert(components.vace_transformer, conditions["depth_control"], conditions["positive"], None, 1.0)
    errors = {}
    for count in (8, 32):
        levels = shifted_levels(count, math.log(3.0), t_max=0.98)
        start = wan.invert(expert, source, levels)
        regenerated = sample_summed_velocity(ProductOfExperts([Factor(expert)]), start, levels, generator=torch.Generator(), start=start).particles
        errors[count] = float((regenerated - source).pow(2).mean().sqrt() / source.pow(2).mean().sqrt())
    assert errors[8] < 0.5 and errors[32] < 0.12 and errors[32] < errors[8] / 3, errors


def test_prompt_embeddings_are_cached_across_jobs_without_umt5(components, monkeypatch) -> None:
    """A second job with the same prompt gets the same embeddings and never loads UMT5."""
    first = components.encode_prompt("a cached prompt", "")
    components.free_encoders()
    loads = []
    original = registry.load
    monkeypatch.setattr(registry, "load", lambda role, *args, **kwargs: loads.append(role) or original(role, *args, **kwargs))
    again = wan.load_wan("tiny", i2v=False).encode_prompt("a cached prompt", "")
    assert "wan.text_encoder" not in loads
    torch.testing.assert_close(first[0], again[0])
    torch.testing.assert_close(first[1], again[1])
    components.encode_prompt("a new prompt")
    assert "wan.text_encoder" in loads


def test_activation_estimate_of_the_full_size_14b_models() -> None:
    """N = 21·30·52 = 32,760 tokens at 832×480×81; P = 2 in bf16: I2V (D 5120, FFN 13824)
    2·N·(7·5120 + 13824)·2 bytes; VACE adds 8 hints of N·D per sample."""
    config = {"patch_size": (1, 2, 2), "num_attention_heads": 40, "attention_head_dim": 128, "ffn_dim": 13824}
    latent = wan.latent_shape(81, 480, 832)
    assert wan.activation_bytes(config, *latent[1:], 2) == 2 * 32760 * (7 * 5120 + 13824) * 2
    vace = {**config, "vace_layers": list(range(0, 40, 5))}
    assert wan.activation_bytes(vace, *latent[1:], 2) - wan.activation_bytes(config, *latent[1:], 2) == 2 * 32760 * 8 * 5120 * 2

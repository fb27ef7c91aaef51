"""Wan2.1 experts with the tiny preset: conditioning shapes, velocities, guidance,
composition, and the sampler calling every expert at every step."""

from __future__ import annotations

import pytest
import torch

import math

from poe_backend.families.wan import experts as wan
from poe_backend.families.wan import tiny as wan_tiny
from poe_backend.models import lookup, specs
from poe_backend.runtime.cache import MODEL_CACHE
from poe_backend.families.wan.runtime import WanRuntime
from poe_backend.sampling import Factor, ProductOfExperts, sample_annealed_langevin, sample_fkc, sample_summed_velocity
from poe_backend.sampling.schedules import linear_levels, shifted_levels
from tests.video_support import SpyExpert, tiny_data_dir  # noqa: F401 (fixture)

NUM_FRAMES, SIZE = 5, 32


@pytest.fixture(scope="module")
def runtime(tiny_data_dir):  # noqa: F811
    runtime = WanRuntime(["vace", "i2v"], NUM_FRAMES, SIZE, SIZE, preset="tiny", device="cpu")
    runtime.plan()
    return runtime


@pytest.fixture(scope="module")
def conditions(runtime):
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, SIZE, SIZE, generator=generator)
    depth = torch.rand(NUM_FRAMES, 1, SIZE, SIZE, generator=generator).expand(-1, 3, -1, -1)
    positive, negative = runtime.encode_prompts(["a ball rolls", ""])
    return {
        "image": image,
        "depth": depth,
        "positive": positive,
        "negative": negative,
        "image_embeds": runtime.encode_image(image),
        "i2v_condition": runtime.i2v_condition(image),
        "depth_control": runtime.vace_control(*wan.depth_control_inputs(depth)),
        "first_frame_control": runtime.vace_control(*wan.first_frame_control_inputs(image, NUM_FRAMES)),
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


def test_conditioning_shapes(runtime, conditions) -> None:
    latent = wan.latent_shape(NUM_FRAMES, SIZE, SIZE)
    assert conditions["positive"].shape == (1, 512, wan_tiny.TINY_TEXT_DIM)
    assert conditions["i2v_condition"].shape == (1, 20, *latent[1:])
    assert conditions["depth_control"].shape == (1, 96, *latent[1:])
    # I2V mask: 4 channels, all 1 on latent frame 0 (the given image), 0 after.
    mask = conditions["i2v_condition"][0, :4]
    assert torch.all(mask[:, 0] == 1) and torch.all(mask[:, 1:] == 0)


def test_vace_masks(runtime, conditions) -> None:
    """Depth: every latent frame generated. First frame: diffusers' resize marks latent
    frame 0 'generate' too (MODELS.md's flag); latent_mask='exact' keeps it."""
    assert torch.all(conditions["depth_control"][0, 32:] == 1)
    resized = conditions["first_frame_control"][0, 32:]
    assert torch.all(resized == 1)
    exact = runtime.vace_control(*wan.first_frame_control_inputs(conditions["image"], NUM_FRAMES), latent_mask="exact")[0, 32:]
    assert torch.all(exact[:, 0] == 0) and torch.all(exact[:, 1:] == 1)
    # The first frame is in the inactive latents either way.
    exact_control = runtime.vace_control(*wan.first_frame_control_inputs(conditions["image"], NUM_FRAMES), latent_mask="exact")
    torch.testing.assert_close(conditions["first_frame_control"][:, :32], exact_control[:, :32])


def test_vae_round_trip_shapes_and_range(runtime) -> None:
    video = torch.rand(1, 3, NUM_FRAMES, SIZE, SIZE) * 2 - 1
    latents = runtime.encode_video(video)
    assert latents.shape == (1, *wan.latent_shape(NUM_FRAMES, SIZE, SIZE))
    decoded = runtime.decode(latents)
    assert decoded.shape == (1, NUM_FRAMES, 3, SIZE, SIZE)  # (B, F, 3, H, W), what write_mp4 takes
    assert decoded.min() >= 0 and decoded.max() <= 1


def test_i2v_velocity_shape_determinism_and_guidance(runtime, conditions) -> None:
    def make(guidance: float) -> wan.WanI2VExpert:
        return wan.WanI2VExpert(runtime.transformer("i2v"), conditions["i2v_condition"], conditions["image_embeds"], conditions["positive"], conditions["negative"], guidance)

    x = _noise()
    guided, unguided = make(4.0), make(1.0)
    velocity = guided.velocity(x, 0.7)
    assert velocity.shape == x.shape and torch.isfinite(velocity).all()
    torch.testing.assert_close(velocity, guided.velocity(x, 0.7))
    assert guided.forward_count == 4
    conditional = unguided.velocity(x, 0.7)
    assert unguided.forward_count == 1
    unconditional = wan.WanI2VExpert(runtime.transformer("i2v"), conditions["i2v_condition"], conditions["image_embeds"], conditions["negative"], None, 1.0).velocity(x, 0.7)
    torch.testing.assert_close(velocity, unconditional + 4.0 * (conditional - unconditional), atol=1e-5, rtol=1e-4)


def test_vace_velocity_depends_on_control(runtime, conditions) -> None:
    x = _noise()
    depth = wan.WanVACEExpert(runtime.transformer("vace"), conditions["depth_control"], conditions["positive"], conditions["negative"], 3.0)
    first = wan.WanVACEExpert(runtime.transformer("vace"), conditions["first_frame_control"], conditions["positive"], conditions["negative"], 3.0)
    off = wan.WanVACEExpert(runtime.transformer("vace"), conditions["depth_control"], conditions["positive"], conditions["negative"], 3.0, control_scale=0.0)
    v_depth, v_first, v_off = depth.velocity(x, 0.5), first.velocity(x, 0.5), off.velocity(x, 0.5)
    assert v_depth.shape == x.shape
    assert not torch.allclose(v_depth, v_first)
    assert not torch.allclose(v_depth, v_off)
    assert depth.transformer is first.transformer  # shared mode: one model, two experts


def test_product_of_depth_expert_with_itself_is_doubled_weight(runtime, conditions) -> None:
    """Π = p·p and p² give the same scores, hence the same FKC run (the weight increment
    ½Δu(‖2s‖² − 2‖s‖²) is the same for both)."""
    expert = wan.WanVACEExpert(runtime.transformer("vace"), conditions["depth_control"], conditions["positive"], conditions["negative"], 2.0)
    levels, results = linear_levels(4, t_max=0.95), []
    for factors in ([Factor(expert), Factor(expert)], [Factor(expert, 2.0)]):
        generator = torch.Generator().manual_seed(5)
        results.append(sample_fkc(ProductOfExperts(factors), _noise(), levels, generator=generator, langevin_steps=1))
    torch.testing.assert_close(results[0].particles, results[1].particles, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(results[0].log_weights, results[1].log_weights, atol=1e-3, rtol=1e-3)


def test_every_expert_called_at_every_langevin_step(runtime, conditions) -> None:
    i2v = SpyExpert(wan.WanI2VExpert(runtime.transformer("i2v"), conditions["i2v_condition"], conditions["image_embeds"], conditions["positive"], None, 1.0))
    depth = SpyExpert(wan.WanVACEExpert(runtime.transformer("vace"), conditions["depth_control"], conditions["positive"], None, 1.0))
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
    with pytest.raises(specs.MissingWeights, match="Wan-AI/Wan2.1-VACE-14B-diffusers"):
        WanRuntime(["vace"], NUM_FRAMES, SIZE, SIZE, preset="default")
    with pytest.raises(specs.MissingWeights, match="Wan-AI/Wan2.1-VACE-1.3B-diffusers"):
        WanRuntime(["vace"], NUM_FRAMES, SIZE, SIZE, preset="preview")
    assert "Fun" in next(iter(wan.UNSUPPORTED_MODELS))


def test_ddim_inversion_then_regeneration_reconstructs_within_a_first_order_error(runtime, conditions) -> None:
    """Invert a VAE-encoded clip with the expert's own ODE (guidance 1), regenerate with the
    same expert and prompt: the relative RMS error is first order in the step (measured
    0.40 at 8 levels, 0.090 at 32, 0.044 at 64 on the tiny VACE), so it must be below 0.5
    at 8 levels, below 0.12 at 32, and fall by at least 3x from 8 to 32 levels."""
    video = torch.rand(1, 3, NUM_FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(4)) * 2 - 1
    source = runtime.encode_video(video)
    expert = wan.WanVACEExpert(runtime.transformer("vace"), conditions["depth_control"], conditions["positive"], None, 1.0)
    errors = {}
    for count in (8, 32):
        levels = shifted_levels(count, math.log(3.0), t_max=0.98)
        start = wan.invert(expert, source, levels)
        regenerated = sample_summed_velocity(ProductOfExperts([Factor(expert)]), start, levels, generator=torch.Generator(), start=start).particles
        errors[count] = float((regenerated - source).pow(2).mean().sqrt() / source.pow(2).mean().sqrt())
    assert errors[8] < 0.5 and errors[32] < 0.12 and errors[32] < errors[8] / 3, errors


def test_prompt_embeddings_are_cached_across_jobs_without_umt5(runtime, monkeypatch) -> None:
    """A second job with the same prompt gets the same embeddings and never loads UMT5;
    a new prompt loads it, and it is released again after encoding."""
    first = runtime.encode_prompts(["a cached prompt", ""])
    loads = []
    original = MODEL_CACHE.load
    monkeypatch.setattr(MODEL_CACHE, "load", lambda role, *args, **kwargs: loads.append(role) or original(role, *args, **kwargs))
    original_encoders = MODEL_CACHE.load_encoders  # encoders load together, through one room check
    monkeypatch.setattr(MODEL_CACHE, "load_encoders", lambda roles, *args, **kwargs: loads.extend(roles) or original_encoders(roles, *args, **kwargs))
    again = WanRuntime(["vace"], NUM_FRAMES, SIZE, SIZE, preset="tiny").encode_prompts(["a cached prompt", ""])
    assert "wan.text_encoder" not in loads
    torch.testing.assert_close(first[0], again[0])
    torch.testing.assert_close(first[1], again[1])
    runtime.encode_prompts(["a new prompt"])
    assert "wan.text_encoder" in loads
    assert str(lookup.resolve("wan.text_encoder", "tiny")) not in MODEL_CACHE.loaded_models()  # this family's (another test may hold FLUX's)


def test_the_decode_plan_frees_the_transformers_and_tiles_when_it_says_so(tiny_data_dir, monkeypatch) -> None:  # noqa: F811
    """A budget whose room holds the transformers but not the decode beside them: the plan
    says free first, then tile; decode releases both transformers from the cache and runs
    with VAE tiling; the next runtime reloads them."""
    from poe_backend.runtime import planner

    MODEL_CACHE.clear()  # earlier tests' models are not this job's
    monkeypatch.setattr(planner, "vae_decode_bytes", lambda family, frames, height, width, tiled: planner.GiB // 8 if tiled else 8 * planner.GiB)
    budget = planner.Budget(vram_free_bytes=2 * planner.GiB, ram_free_bytes=2**34)  # room: 1 GiB after the reserve
    planned = WanRuntime(["vace", "i2v"], NUM_FRAMES, SIZE, SIZE, preset="tiny", budget=budget)
    job = planned.plan()
    assert set(job.placement.placements.values()) == {"resident"}
    assert job.decode.free_transformers and job.decode.tiled and planned.vae.use_tiling  # encodes beside the models tile too
    vace, _ = planned.transformer("vace"), planned.transformer("i2v")  # held, as the job's experts hold them while it decodes
    paths = [path for path in MODEL_CACHE.loaded_models() if "transformer_" in path]
    assert len(paths) == 2
    decoded = planned.decode(torch.zeros(1, *wan.latent_shape(NUM_FRAMES, SIZE, SIZE)))
    assert decoded.shape == (1, NUM_FRAMES, 3, SIZE, SIZE) and planned.vae.use_tiling
    assert not any("transformer_" in path for path in MODEL_CACHE.loaded_models())
    assert next(vace.parameters()).is_meta  # its memory is back although it is still referenced
    described = planned.describe()
    assert described["decode"] == {"tiled": True, "per_image": True, "free_transformers": True}
    assert described["plan"]["placements"]["wan.transformer.vace"]["placement"] == "resident"
    unplanned = WanRuntime(["vace"], NUM_FRAMES, SIZE, SIZE, preset="tiny", budget=None)
    assert unplanned.plan().decode.free_transformers is False and not unplanned.vae.use_tiling  # off CUDA: host memory, untiled


def _wan_particle_bytes(kinds: list[str]) -> int:
    from poe_backend.runtime import planner

    configs = {wan_role: planner.installed_config(wan_role, "tiny") for wan_role in (f"wan.transformer.{kind}" for kind in kinds)}
    return planner.wan_job_bytes(configs, NUM_FRAMES, SIZE, SIZE)[0]


def test_planned_micro_batches_run_through_both_cfg_passes(runtime, conditions, monkeypatch) -> None:
    """A budget with room for both transformers and 3 particles' activations: P = 8 runs as
    3 + 3 + 2, each micro-batch through both CFG passes (the transformer sees 3, 3, 3, 3, 2,
    2), with the velocities of one batch of 8."""
    from poe_backend.runtime import planner

    monkeypatch.setattr(planner, "vae_decode_bytes", lambda *args, **kwargs: 0)
    weights = sum(planner.installed_size(f"wan.transformer.{kind}", "tiny").weight_bytes for kind in ("vace", "i2v"))
    budget = planner.Budget(vram_free_bytes=planner.GiB + weights + 3 * _wan_particle_bytes(["vace", "i2v"]), ram_free_bytes=2**34)
    planned = WanRuntime(["vace", "i2v"], NUM_FRAMES, SIZE, SIZE, preset="tiny", budget=budget)
    assert planned.plan(particles=8).micro_batch == 3 and planned.describe()["micro_batch"] == 3
    expert = planned.vace_expert(conditions["depth_control"], conditions["positive"], conditions["negative"], 3.0)
    sizes = []
    handle = expert.transformer.register_forward_pre_hook(lambda module, args, kwargs: sizes.append(kwargs["hidden_states"].shape[0]), with_kwargs=True)
    x = _noise(particles=8)
    velocity = expert.velocity(x, 0.6)
    handle.remove()
    assert sizes == [3, 3, 3, 3, 2, 2] and expert.forward_count == 2
    whole = wan.WanVACEExpert(expert.transformer, conditions["depth_control"], conditions["positive"], conditions["negative"], 3.0)
    torch.testing.assert_close(velocity, whole.velocity(x, 0.6), atol=1e-5, rtol=1e-5)
    assert planned.i2v_expert(conditions["i2v_condition"], conditions["image_embeds"], conditions["positive"], None, 1.0).max_batch == 3
    MODEL_CACHE.clear()


def test_conditioned_vace_plans_its_aligned_pass_through_both_cfg_passes(tiny_data_dir) -> None:  # noqa: F811
    from poe_backend.runtime import planner

    planned = WanRuntime(["vace", "i2v"], NUM_FRAMES, SIZE, SIZE, preset="tiny", budget=planner.Budget(64 * planner.GiB, 64 * planner.GiB))
    config = planner.installed_config("wan.transformer.vace", "tiny")
    latent = wan.latent_shape(NUM_FRAMES, SIZE, SIZE)[1:]
    expected = planner.wan_conditioned_bytes(*latent, 1, vace_layers=len(config["vace_layers"]), hidden=config["num_attention_heads"] * config["attention_head_dim"],
                                             blocks=config["num_layers"], passes=2)
    job = planned.plan(particles=2, conditioned=["vace"])
    assert job.particle_bytes == expected and job.placement.planned.placements["wan.transformer.vace"].placement == "resident"
    with pytest.raises(ValueError, match="streams wan.transformer.vace"):
        planned.plan(offload="sequential", conditioned=["vace"])
    MODEL_CACHE.clear()


def test_the_aligned_pass_runs_checkpointed_with_the_same_result(runtime, conditions) -> None:
    """_WanExpert.aligned_velocity turns the transformer's gradient checkpointing on (both CFG
    passes): the result is the plain aligned pass's."""
    from poe_backend.sampling import GenerativeExpert

    expert = wan.WanVACEExpert(runtime.transformer("vace"), conditions["depth_control"], conditions["positive"], conditions["negative"], 3.0)
    x, target = _noise(seed=9), _noise(seed=10)
    expert.transformer.disable_gradient_checkpointing()
    plain = GenerativeExpert.aligned_velocity(expert, x, 0.5, [target], 1.0, 0.1)
    checkpointed = expert.aligned_velocity(x, 0.5, [target], 1.0, 0.1)
    assert expert.transformer.is_gradient_checkpointing
    torch.testing.assert_close(checkpointed, plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(checkpointed, expert.velocity(x, 0.5), atol=1e-4)


def test_clip_image_encoder_loads_and_runs_in_fp32(tiny_data_dir, monkeypatch) -> None:  # noqa: F811
    """As the reference loads it: CLIP in fp32 whatever the transformers' dtype (bf16 here),
    its embeddings cast to that dtype; the room the cache makes before loading it is exactly
    the fp32 encoder's bytes."""
    MODEL_CACHE.clear()
    made, loaded = [], []
    original_room, original_encoders = MODEL_CACHE._make_room, MODEL_CACHE.load_encoders
    monkeypatch.setattr(MODEL_CACHE, "_make_room", lambda name, required, device: made.append((name, required)) or original_room(name, required, device))
    monkeypatch.setattr(MODEL_CACHE, "load_encoders", lambda roles, *args, **kwargs: loaded.append(original_encoders(roles, *args, **kwargs)) or loaded[-1])
    bf16 = WanRuntime(["i2v"], NUM_FRAMES, SIZE, SIZE, preset="tiny", dtype=torch.bfloat16, budget=None)
    embeds = bf16.encode_image(torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(11)))
    (_, encoder), _ = loaded[-1]
    assert embeds.dtype == torch.bfloat16 and {parameter.dtype for parameter in encoder.parameters()} == {torch.float32}
    stored = sum(tensor.numel() * tensor.element_size() for tensor in encoder.state_dict().values())
    assert ("wan.image_encoder", stored) in made
    MODEL_CACHE.clear()

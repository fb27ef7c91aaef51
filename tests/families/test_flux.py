"""FLUX experts with the tiny preset (random weights, real classes, real loading path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from poe_backend.families.flux import runtime as flux

from poe_backend.models import lookup

from poe_backend.models import specs

from poe_backend.runtime.cache import MODEL_CACHE
from poe_backend.sampling import Factor, ProductOfExperts, SamplingCancelled, sample_fkc
from poe_backend.sampling.schedules import log_snr_levels

HEIGHT, WIDTH = 32, 48


@pytest.fixture(scope="module")
def space() -> flux.FluxLatentSpace:
    return flux.FluxLatentSpace(HEIGHT, WIDTH, preset="tiny", max_sequence_length=16)


@pytest.fixture(scope="module")
def prompts(space):
    return space.encode_prompts(["a red ball", "a table"])


@pytest.fixture(scope="module")
def depth_map() -> np.ndarray:
    depth = np.full((HEIGHT, WIDTH), 4.0, dtype=np.float32)
    depth[:4] = np.inf
    depth[8:24, 16:32] = 2.0
    return depth


@pytest.fixture(scope="module")
def depth_expert(space, prompts, depth_map) -> flux.FluxExpert:
    return flux.FluxExpert(MODEL_CACHE.load(flux.TRANSFORMER_ROLES["depth"], "tiny"), space, prompts[0], guidance=10.0, condition=flux.depth_condition(space, depth_map), name="depth")


def test_tiny_transformer_round_trips_through_save_and_from_pretrained(tmp_path):
    from diffusers import FluxTransformer2DModel

    loaded = MODEL_CACHE.load("flux.transformer.depth", "tiny")
    assert lookup.resolve("flux.transformer.depth", "tiny").is_relative_to(specs.data_dir())
    assert loaded.config.in_channels == 128 and loaded.config.out_channels == 64
    loaded.save_pretrained(tmp_path / "copy")
    again = FluxTransformer2DModel.from_pretrained(tmp_path / "copy")
    for (name, first), (_, second) in zip(loaded.state_dict().items(), again.state_dict().items()):
        assert torch.equal(first, second), name
    assert MODEL_CACHE.load("flux.transformer.depth", "tiny") is loaded  # cached per process


def test_prompt_encoding_shapes_and_text_encoders_are_freed(space, prompts):
    assert prompts[0].embeds.shape == (1, 16, 32) and prompts[0].pooled.shape == (1, 32)
    assert not torch.equal(prompts[0].embeds, prompts[1].embeds)
    assert not any("text_encoder" in path for path in MODEL_CACHE.loaded_models())


def test_encode_decode_shapes_and_ranges(space):
    image = torch.rand(2, 3, HEIGHT, WIDTH) * 2 - 1
    packed = space.encode_image(image)
    assert packed.shape == (2, (HEIGHT // 16) * (WIDTH // 16), 64) == (2, *space.event_shape)
    assert torch.equal(space.encode_image(image), packed)  # VAE mode: deterministic
    decoded = space.decode(packed)
    assert decoded.shape == (2, 3, HEIGHT, WIDTH)
    assert decoded.min() >= 0 and decoded.max() <= 1
    assert torch.equal(space.unpack(space.pack(torch.arange(2 * 16 * 4 * 6.0).reshape(2, 16, 4, 6))), torch.arange(2 * 16 * 4 * 6.0).reshape(2, 16, 4, 6))


def test_disparity_is_near_white_and_background_black(depth_map):
    disparity = flux.disparity_from_depth(depth_map)
    assert disparity.dtype == np.float32 and disparity.min() >= 0 and disparity.max() <= 1
    assert np.all(disparity[8:24, 16:32] == 1.0)  # nearest
    assert np.all(disparity[:4] == 0.0)  # +inf background
    assert np.all(disparity[30] == 0.0)  # farthest hit
    assert np.all(flux.disparity_from_depth(np.full((4, 4), np.inf)) == 0)


def test_box_token_weights_follow_the_pixel_to_token_rule():
    weights = flux.box_token_weights([17, 0, 33, 15], HEIGHT, WIDTH).reshape(2, 3)
    assert torch.equal(weights, torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    weights = flux.box_token_weights([0, 15, 16, 17], HEIGHT, WIDTH).reshape(2, 3)
    assert torch.equal(weights, torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))


def test_regional_weights_sum_to_one_and_product_total_is_scalar(space, prompts):
    global_map, region_maps = flux.regional_weights([[0, 0, 32, 32], [16, 0, 48, 16]], HEIGHT, WIDTH, region_strength=0.8)
    total = global_map + sum(region_maps)
    assert torch.allclose(total, torch.ones_like(total))
    assert global_map.min() >= 0 and torch.isclose(global_map.reshape(2, 3)[0, 1], torch.tensor(0.2))
    expert = flux.FluxExpert(MODEL_CACHE.load(flux.TRANSFORMER_ROLES["dev"], "tiny"), space, prompts[0], guidance=3.5)
    product = flux.RegionalProduct([Factor(expert, global_map)] + [Factor(expert, m) for m in region_maps])
    assert product.total_weight() == pytest.approx(1.0)


def test_fill_condition_masks_the_image_and_packs_the_mask(space):
    image = np.full((HEIGHT, WIDTH, 3), 255, dtype=np.uint8)
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.float32)
    mask[:16, :16] = 1.0
    condition = flux.fill_condition(space, image, mask)
    assert condition.shape == (1, space.num_tokens, 64 + 256)
    mask_channels = condition[0, :, 64:]
    assert torch.all(mask_channels[0] == 1) and torch.all(mask_channels[1:] == 0)
    masked_only = space.encode_image(flux.image_tensor(image) * (1 - torch.from_numpy(mask))[None, None])
    assert torch.allclose(condition[..., :64], masked_only)


def test_condition_channel_mismatch_is_named(space, prompts):
    with pytest.raises(ValueError, match="condition channels"):
        flux.FluxExpert(MODEL_CACHE.load(flux.TRANSFORMER_ROLES["fill"], "tiny"), space, prompts[0], guidance=30.0, condition=None, name="fill")


def test_depth_velocity_shape_dtype_and_determinism(space, depth_expert):
    x = torch.randn(3, *space.event_shape, generator=torch.Generator().manual_seed(0))
    velocity = depth_expert.velocity(x, 0.5)
    assert velocity.shape == x.shape and velocity.dtype == torch.float32 and torch.isfinite(velocity).all()
    assert torch.equal(depth_expert.velocity(x, 0.5), velocity)
    # batched over particles == one at a time
    single = torch.cat([depth_expert.velocity(x[i : i + 1], 0.5) for i in range(3)])
    assert torch.allclose(single, velocity, atol=1e-5)
    chunked = flux.FluxExpert(depth_expert.transformer, space, depth_expert.prompt, guidance=10.0, condition=depth_expert.condition, max_batch=2)
    assert torch.allclose(chunked.velocity(x, 0.5), velocity, atol=1e-5)


def test_product_of_depth_expert_with_itself_equals_doubled_weight(space, depth_expert):
    x = torch.randn(2, *space.event_shape, generator=torch.Generator().manual_seed(1))
    twice = ProductOfExperts([Factor(depth_expert, 1.0), Factor(depth_expert, 1.0)]).evaluate(x, 0.4)
    doubled = ProductOfExperts([Factor(depth_expert, 2.0)]).evaluate(x, 0.4)
    assert torch.allclose(twice.score, doubled.score, atol=1e-5)
    assert torch.allclose(twice.x0, doubled.x0, atol=1e-5)


def test_every_expert_is_called_at_every_langevin_step(space, prompts, depth_map):
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.float32)
    mask[8:24, 16:32] = 1
    depth = flux.FluxExpert(MODEL_CACHE.load(flux.TRANSFORMER_ROLES["depth"], "tiny"), space, prompts[0], guidance=10.0, condition=flux.depth_condition(space, depth_map), name="depth")
    fill = flux.FluxExpert(MODEL_CACHE.load(flux.TRANSFORMER_ROLES["fill"], "tiny"), space, prompts[0], guidance=30.0, condition=flux.fill_condition(space, image, mask), name="fill")
    product = ProductOfExperts([Factor(depth), Factor(fill)])
    seen = []

    def record(progress):
        seen.append((progress.level, progress.step, depth.calls, fill.calls))

    generator = torch.Generator().manual_seed(0)
    levels = log_snr_levels(3, t_max=0.95)
    result = sample_fkc(product, torch.randn(2, *space.event_shape, generator=generator), levels, generator=generator, langevin_steps=2, callback=record)
    assert result.particles.shape == (2, *space.event_shape)
    assert [(level, step) for level, step, _, _ in seen] == [(2, 0), (2, 1), (2, 2), (3, 0)]
    calls = [(d, f) for _, _, d, f in seen]
    assert all(d == f for d, f in calls)  # both experts every time
    counts = [d for d, _ in calls]
    assert counts[1] - counts[0] == counts[2] - counts[1] == 1  # one call per Langevin step
    assert counts[0] >= 2 and counts[3] == counts[2]  # the start; the last step to t=0 is the clean prediction, no call
    assert product.nfe == depth.calls + fill.calls
    assert product.nfe == 2 * depth.calls


def test_cancellation_stops_sampling(space, depth_expert):
    product = ProductOfExperts([Factor(depth_expert)])
    generator = torch.Generator().manual_seed(0)
    count = iter(range(100))
    with pytest.raises(SamplingCancelled):
        sample_fkc(product, torch.randn(1, *space.event_shape), log_snr_levels(6), generator=generator, langevin_steps=1, should_stop=lambda: next(count) >= 2)


def test_rf_solver_value_sharing_stores_and_injects(space, prompts):
    from poe_backend.families.flux.rf_solver import ValueSharing, inversion_times, rf_solver

    transformer = MODEL_CACHE.load(flux.TRANSFORMER_ROLES["dev"], "tiny")
    source = flux.FluxExpert(transformer, space, prompts[0], guidance=1.0)
    target = flux.FluxExpert(transformer, space, prompts[1], guidance=2.0)
    x0 = torch.randn(1, *space.event_shape, generator=torch.Generator().manual_seed(0))
    times = inversion_times(3)
    sharing = ValueSharing(transformer, 3, inject=2, num_blocks=1)
    noise, _ = rf_solver(source, x0, times, before_forward=sharing.inversion_hook)
    assert sorted(sharing.stored) == [(1, 0, 0), (1, 1, 0), (2, 0, 0), (2, 1, 0)]
    shared, _ = rf_solver(target, noise, times[::-1], before_forward=sharing.editing_hook)
    sharing.remove()
    plain, _ = rf_solver(target, noise, times[::-1])
    assert not torch.allclose(shared, plain)
    again, _ = rf_solver(target, noise, times[::-1])
    assert torch.equal(again, plain)  # hooks are gone


def test_runtime_caches_prompt_embeddings_across_jobs(monkeypatch):
    from poe_backend.runtime import cache

    first = flux.FluxRuntime(HEIGHT, WIDTH, preset="tiny", max_sequence_length=16).encode_prompts(["a blue cube", "a lamp"])
    loads = []
    original = cache._from_pretrained
    monkeypatch.setattr(cache, "_from_pretrained", lambda spec, path, *rest: loads.append(path) or original(spec, path, *rest))
    again = flux.FluxRuntime(HEIGHT, WIDTH, preset="tiny", max_sequence_length=16).encode_prompts(["a lamp", "a blue cube"])
    assert not any("text_encoder" in path for path in loads)  # no encoder loaded for known prompts
    assert again[0] is first[1] and again[1] is first[0]
    new = flux.FluxRuntime(HEIGHT, WIDTH, preset="tiny", max_sequence_length=16).encode_prompts(["a green cone"])
    assert any("text_encoder" in path for path in loads) and new[0].embeds.shape == (1, 16, 32)
    assert not any("text_encoder" in path for path in MODEL_CACHE.loaded_models())  # released after encoding


def test_decode_preview_is_smaller_and_matches_full_decode_at_full_size(space):
    runtime = flux.FluxRuntime(HEIGHT, WIDTH, preset="tiny", max_sequence_length=16)
    packed = torch.randn(3, *runtime.event_shape, generator=torch.Generator().manual_seed(3))
    preview = runtime.decode_preview(packed, max_pixels=16 * 24)
    assert preview.shape == (3, 3, 16, 24) and preview.shape[-1] * preview.shape[-2] <= 16 * 24
    assert torch.equal(runtime.decode_preview(packed, max_pixels=HEIGHT * WIDTH), runtime.decode(packed))


def test_runtime_plans_before_loading_and_reports_the_plan():
    runtime = flux.FluxRuntime(HEIGHT, WIDTH, preset="tiny", max_sequence_length=16)
    with pytest.raises(RuntimeError, match="plan"):
        runtime.transformer("depth")
    plan = runtime.plan(["depth", "fill"], offload="group")
    assert plan.placement.placements == {"flux.transformer.depth": "group_offload", "flux.transformer.fill": "group_offload"}
    assert runtime.describe()["placements"] == plan.placement.placements and runtime.describe()["weight_bytes"]["flux.transformer.depth"] > 0
    runtime.plan(["depth"])  # auto on CPU: resident
    assert runtime.describe()["placements"] == {"flux.transformer.depth": "resident"}
    MODEL_CACHE.clear()


def test_models_resident_from_an_earlier_job_count_as_free_memory(monkeypatch):
    from poe_backend.runtime import planner
    from poe_backend.runtime.planner import Budget

    MODEL_CACHE.clear()
    monkeypatch.setattr(planner, "flux_activation_bytes", lambda tokens, text_tokens, batch, **_: 0)
    monkeypatch.setattr(planner, "vae_decode_bytes", lambda *args, **kwargs: 0)
    size = planner.installed_size("flux.transformer.depth", "tiny").weight_bytes
    small = Budget(vram_free_bytes=planner.GiB + size // 2, ram_free_bytes=2**34)  # the planner reserves 1 GiB
    fresh = flux.FluxRuntime(HEIGHT, WIDTH, preset="tiny", max_sequence_length=16, budget=small)
    assert fresh.plan(["depth"]).placement.placements["flux.transformer.depth"] in ("group_offload", "leaf_offload")  # does not fit: streamed
    first = flux.FluxRuntime(HEIGHT, WIDTH, preset="tiny", max_sequence_length=16, budget=Budget(vram_free_bytes=planner.GiB + 10 * size, ram_free_bytes=2**34))
    first.plan(["depth"])
    first.transformer("depth")  # resident now, holding its bytes of the device
    MODEL_CACHE.clear()
    first.transformer("depth")
    after = flux.FluxRuntime(HEIGHT, WIDTH, preset="tiny", max_sequence_length=16, budget=small)
    assert after.plan(["depth"]).placement.placements == {"flux.transformer.depth": "resident"}  # its own bytes count as free
    MODEL_CACHE.clear()


def test_tiled_decode_changes_only_how_the_vae_runs(space):
    packed = torch.randn(2, *space.event_shape, generator=torch.Generator().manual_seed(4))
    whole, tiled = space.decode(packed), space.decode(packed, tile=32)
    assert tiled.shape == whole.shape == (2, 3, HEIGHT, WIDTH) and 0.0 <= tiled.min() and tiled.max() <= 1.0
    assert not torch.equal(tiled, whole)  # 32-pixel tiles blended: a different computation ran
    assert not space.vae.use_tiling and space.vae.tile_sample_min_size == space.vae.config.sample_size  # restored
    assert torch.equal(space.decode(packed), whole)


def test_decode_follows_the_plan_freeing_and_tiling(monkeypatch):
    from dataclasses import replace

    from poe_backend.runtime import planner
    from poe_backend.runtime.planner import Budget, DecodePlan

    MODEL_CACHE.clear()
    monkeypatch.setitem(planner.DECODE_TILE, "flux", 32)  # tiny images: a tile smaller than the image
    runtime = flux.FluxRuntime(HEIGHT, WIDTH, preset="tiny", max_sequence_length=16, budget=Budget(vram_free_bytes=64 * planner.GiB, ram_free_bytes=64 * planner.GiB))
    planned = runtime.plan(["depth"])
    assert planned.placement.planned is not None and planned.decode == DecodePlan(tiled=False, per_image=True, free_transformers=False)
    packed = torch.randn(2, *runtime.event_shape, generator=torch.Generator().manual_seed(5))
    assert torch.equal(runtime.decode(packed), runtime.space.decode(packed, max_batch=1))
    transformer = runtime.transformer("depth")
    runtime.job_plan = replace(planned, decode=DecodePlan(tiled=True, per_image=True, free_transformers=True))
    images = runtime.decode(packed)
    assert torch.equal(images, runtime.space.decode(packed, max_batch=1, tile=32))
    assert next(transformer.parameters()).is_meta  # its memory is given back though the job still holds it
    assert not any("transformer" in path for path in MODEL_CACHE.loaded_models())
    MODEL_CACHE.clear()


# ---------------------------------------------------------------------------------------
# Many particles: planned micro-batches (issue 21)


def _batch_sizes(transformer: torch.nn.Module) -> tuple[list[int], object]:
    """The particle count of every forward of ``transformer`` (a spy), and its hook handle."""
    sizes: list[int] = []
    handle = transformer.register_forward_pre_hook(lambda module, args, kwargs: sizes.append(kwargs["hidden_states"].shape[0]), with_kwargs=True)
    return sizes, handle


def _dev_particle_bytes() -> int:
    from poe_backend.runtime import planner

    configs = {"flux.transformer.dev": planner.installed_config("flux.transformer.dev", "tiny")}
    return planner.flux_job_bytes(configs, HEIGHT, WIDTH, 16)[0]


def test_thirty_two_particles_run_in_the_micro_batches_the_plan_fits(monkeypatch):
    """A budget with room for the weights and 10 particles' activations: P = 32 runs in four
    micro-batches of 8 (the fewest equal ones that fit), the transformer never sees more, the
    velocities are those of one batch of 32, and result.json's placement records 8."""
    from poe_backend.runtime import planner
    from poe_backend.runtime.planner import Budget

    MODEL_CACHE.clear()
    monkeypatch.setattr(planner, "vae_decode_bytes", lambda *args, **kwargs: 0)
    weights = planner.installed_size("flux.transformer.dev", "tiny").weight_bytes
    budget = Budget(vram_free_bytes=planner.GiB + weights + 10 * _dev_particle_bytes(), ram_free_bytes=2**34)  # the planner reserves 1 GiB
    runtime = flux.FluxRuntime(HEIGHT, WIDTH, preset="tiny", max_sequence_length=16, budget=budget)
    prompt = runtime.encode_prompts(["a red ball"])[0]
    assert runtime.plan(["dev"], particles=32).micro_batch == 8 and runtime.describe()["micro_batch"] == 8
    assert runtime.describe()["plan"]["micro_batch"] == 8 and runtime.describe()["placements"] == {"flux.transformer.dev": "resident"}
    expert = runtime.expert("dev", prompt, guidance=3.5)
    sizes, handle = _batch_sizes(expert.transformer)
    x = torch.randn(32, *runtime.event_shape, generator=torch.Generator().manual_seed(6))
    velocity = ProductOfExperts([Factor(expert)]).velocities(x, 0.5)[0]
    handle.remove()
    assert sizes == [8, 8, 8, 8]
    whole = runtime.expert("dev", prompt, guidance=3.5, max_batch=32)
    torch.testing.assert_close(velocity, whole.velocity(x, 0.5), atol=1e-5, rtol=1e-5)
    assert runtime.plan(["dev"], particles=32, max_batch=4).micro_batch == 4  # a task's max_batch still decides
    unbudgeted = flux.FluxRuntime(HEIGHT, WIDTH, preset="tiny", max_sequence_length=16, budget=None)
    assert unbudgeted.plan(["dev"], particles=32).micro_batch == 32  # off CUDA: all at once unless given
    MODEL_CACHE.clear()


def test_reward_previews_decode_in_batches_that_fit_the_activations_room(monkeypatch):
    """The VQAScore preview decode of 32 particles runs :meth:`FluxRuntime.preview_batch`
    images at a time (here 1: one 16×24 preview decode needs more than the planned
    activations of a micro-batch), with the images of one decode of all 32."""
    from poe_backend.runtime import planner
    from poe_backend.runtime.planner import Budget

    MODEL_CACHE.clear()
    weights = planner.installed_size("flux.transformer.dev", "tiny").weight_bytes
    decode = planner.vae_decode_bytes("flux", 1, HEIGHT, WIDTH, False)
    runtime = flux.FluxRuntime(HEIGHT, WIDTH, preset="tiny", max_sequence_length=16, budget=Budget(planner.GiB + weights + decode, 2**34))
    runtime.plan(["dev"], particles=32)
    packed = torch.randn(32, *runtime.event_shape, generator=torch.Generator().manual_seed(7))
    max_pixels = 16 * 24
    batch = runtime.preview_batch(32, max_pixels)
    preview_bytes = planner.vae_decode_bytes("flux", 1, 16, 24, False)
    assert batch == max(1, runtime.micro_batch * runtime.job_plan.particle_bytes // preview_bytes) < 32
    sizes = []
    handle = runtime.space.vae.decoder.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    previews = runtime.decode_preview(packed, max_pixels)
    handle.remove()
    assert sizes == [batch] * (32 // batch) and previews.shape == (32, 3, 16, 24)
    torch.testing.assert_close(previews, runtime.space.decode(packed, max_batch=32, max_pixels=max_pixels), atol=1e-5, rtol=1e-5)
    MODEL_CACHE.clear()


def test_conditioned_fill_plans_its_aligned_pass_and_is_never_streamed():
    """``conditioned=["fill"]``: one particle costs Fill's aligned pass (not a forward), and an
    explicit streamed offload of a conditioned transformer is refused by name."""
    from poe_backend.runtime import planner
    from poe_backend.runtime.planner import Budget

    runtime = flux.FluxRuntime(HEIGHT, WIDTH, preset="tiny", max_sequence_length=16, budget=Budget(64 * planner.GiB, 64 * planner.GiB))
    config = planner.installed_config("flux.transformer.fill", "tiny")
    hidden, blocks = config["num_attention_heads"] * config["attention_head_dim"], config["num_layers"] + config["num_single_layers"]
    plan = runtime.plan(["depth", "fill"], particles=4, conditioned=["fill"])
    assert plan.particle_bytes == planner.flux_conditioned_bytes(runtime.num_tokens, 16, 1, hidden=hidden, blocks=blocks) > planner.flux_activation_bytes(runtime.num_tokens, 16, 1, hidden=hidden)
    assert plan.placement.planned.placements["flux.transformer.fill"].placement == "resident"
    with pytest.raises(ValueError, match="streams flux.transformer.fill"):
        runtime.plan(["depth", "fill"], offload="group", conditioned=["fill"])
    with pytest.raises(ValueError, match="not among"):
        runtime.plan(["depth"], conditioned=["fill"])
    MODEL_CACHE.clear()


def _saved_bytes(call) -> tuple[torch.Tensor, int]:
    """``call()``'s result and the bytes of the tensors autograd saved while it ran (seen by an
    outer ``saved_tensors_hooks``; checkpointed blocks save theirs through torch's own)."""
    storages: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        result = call()
    return result, sum(storages.values())


def test_the_aligned_pass_runs_checkpointed_with_the_same_result(space, depth_expert):
    """FluxExpert.aligned_velocity turns the transformer's gradient checkpointing on: the
    result is the plain aligned pass's, and the tensors kept outside the checkpointed blocks
    are a small part of what the plain pass keeps."""
    from poe_backend.sampling import GenerativeExpert

    x = torch.randn(3, *space.event_shape, generator=torch.Generator().manual_seed(8))
    target = torch.randn_like(x)
    depth_expert.transformer.disable_gradient_checkpointing()
    plain, plain_bytes = _saved_bytes(lambda: GenerativeExpert.aligned_velocity(depth_expert, x, 0.5, [target], 1.0, 0.1))
    checkpointed, checkpointed_bytes = _saved_bytes(lambda: depth_expert.aligned_velocity(x, 0.5, [target], 1.0, 0.1))
    assert depth_expert.transformer.is_gradient_checkpointing
    torch.testing.assert_close(checkpointed, plain, atol=1e-5, rtol=1e-5)
    assert checkpointed_bytes < plain_bytes / 2


def test_fp8_storage_keeps_the_aligned_pass_exact(space, depth_expert):
    """A resident fp8 placement (layerwise casting) under the checkpointed backward: the
    aligned pass equals that of the same model with its weights rounded to fp8 and kept in
    fp32 (the backward reads the upcast copies the forward saved, not the fp8 storage)."""
    import copy

    stored = copy.deepcopy(depth_expert.transformer)
    stored.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    rounded = copy.deepcopy(depth_expert.transformer)
    rounded.load_state_dict({name: value.float() for name, value in stored.state_dict().items()})
    x = torch.randn(2, *space.event_shape, generator=torch.Generator().manual_seed(9))
    target = torch.randn_like(x)
    cast, plain = (flux.FluxExpert(model, space, depth_expert.prompt, guidance=10.0, condition=depth_expert.condition).aligned_velocity(x, 0.5, [target], 1.0, 0.1)
                   for model in (stored, rounded))
    torch.testing.assert_close(cast, plain, atol=1e-6, rtol=1e-6)
    assert stored.is_gradient_checkpointing  # the backward recomputed each block through the casting hooks

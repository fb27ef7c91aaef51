"""Placement decisions and their application to tiny diffusers models (CPU)."""

from __future__ import annotations

import pytest
import torch
from diffusers.hooks import group_offloading

from poe_backend.runtime import placement
from poe_backend.runtime.cache import ModelCache
from poe_backend.runtime.planner import RolePlan
from poe_backend.runtime.placement import apply_placement, placement_name, placement_of


def test_explicit_offload_names_map_to_placements():
    assert placement.placement_for_offload("none") == "resident"
    assert placement.placement_for_offload("none", fp8_storage=True) == "fp8_resident"
    assert placement.placement_for_offload("group") == "group_offload"
    assert placement.placement_for_offload("group", fp8_storage=True) == "fp8_group_offload"
    with pytest.raises(ValueError, match="model"):
        placement.placement_for_offload("model")


def test_planner_decisions_name_placements():
    assert placement_name(RolePlan("resident", False)) == "resident"
    assert placement_name(RolePlan("resident", True)) == "fp8_resident"
    assert placement_name(RolePlan("group_offload", True)) == "fp8_group_offload"


def test_hooks_are_applied_once_per_module_and_removed_on_change(monkeypatch):
    cache = ModelCache()
    module = cache.load("flux.transformer.dev", "tiny")
    applied = []
    original = group_offloading.apply_group_offloading
    monkeypatch.setattr("diffusers.hooks.apply_group_offloading", lambda *args, **kwargs: applied.append(kwargs) or original(*args, **kwargs))
    for _ in range(3):
        apply_placement(module, "group_offload", "cpu")
    assert len(applied) == 1 and placement_of(module) == "group_offload"
    assert group_offloading._is_group_offload_enabled(module)
    apply_placement(module, "resident", "cpu")
    assert not group_offloading._is_group_offload_enabled(module) and placement_of(module) == "resident"
    with pytest.raises(placement.PlacementChangeNeedsReload):
        apply_placement(module, "fp8_resident", "cpu")


def test_group_offload_keeps_outputs_and_one_host_copy():
    cache = ModelCache()
    module = cache.load("flux.transformer.dev", "tiny")
    storages = {parameter.data_ptr() for parameter in module.parameters()}
    inputs = dict(
        hidden_states=torch.randn(1, 6, 64, generator=torch.Generator().manual_seed(0)),
        encoder_hidden_states=torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(1)),
        pooled_projections=torch.randn(1, 32, generator=torch.Generator().manual_seed(2)),
        timestep=torch.tensor([0.5]),
        guidance=torch.tensor([3.5]) if module.config.guidance_embeds else None,
        img_ids=torch.zeros(6, 3),
        txt_ids=torch.zeros(4, 3),
        return_dict=False,
    )
    with torch.inference_mode():
        expected = module(**inputs)[0]
        apply_placement(module, "group_offload", "cpu")
        streamed = module(**inputs)[0]
    assert torch.equal(expected, streamed)
    assert {parameter.data_ptr() for parameter in module.parameters()} == storages  # no second copy on the host


def _fresh(role: str) -> torch.nn.Module:
    """A tiny model of ``role`` loaded outside any cache (fp32)."""
    from poe_backend.models.lookup import resolve
    from poe_backend.models.specs import get_spec
    from poe_backend.runtime.cache import _from_pretrained

    return _from_pretrained(get_spec(role, "tiny"), str(resolve(role, "tiny")), torch.float32, "cpu")


def _power_of_two_bytes(module: torch.nn.Module) -> int:
    """What pinning tensor by tensor locks: torch's pinned allocator rounds each block up."""
    return sum(1 << max(0, (tensor.numel() * tensor.element_size() - 1).bit_length()) for tensor in [*module.parameters(), *module.buffers()])


@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("streamed", ["group_offload", "leaf_offload"])
def test_offload_groups_lock_exactly_the_host_bytes_the_planner_counts(streamed, fp8):
    """The planner counts what a streamed model locks (``ModelSize.pinned_bytes``: its blocks
    under block-level offload, whose other tensors diffusers moves from pageable memory, all
    of it under leaf offload); packing each offload group into one buffer locks exactly that,
    where pinning every tensor on its own locked each rounded up to a power of two."""
    from poe_backend.runtime.planner import installed_config, model_size

    role = "flux.transformer.depth"
    module = _fresh(role)
    if fp8:
        module.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    planned = model_size(role, "diffusers:FluxTransformer2DModel", installed_config(role, "tiny"), dtype=torch.float32).pinned_bytes(streamed, fp8)
    inputs = {"hidden_states": torch.randn(1, 16, 128), "encoder_hidden_states": torch.randn(1, 4, module.config.joint_attention_dim),
              "pooled_projections": torch.randn(1, module.config.pooled_projection_dim), "timestep": torch.tensor([0.5]), "guidance": torch.tensor([3.5]),
              "txt_ids": torch.zeros(4, 3), "img_ids": torch.zeros(16, 3), "return_dict": False}
    before = module(**inputs)[0]
    per_tensor = _power_of_two_bytes(module)
    include_rest = streamed == "leaf_offload"
    packed = placement.pin_offload_groups(module, register=False, include_rest=include_rest)
    assert packed == planned == placement.pinned_bytes(module)
    assert per_tensor > planned
    blocks = len(module.transformer_blocks) + len(module.single_transformer_blocks)
    groups = placement.offload_groups(module, include_rest=include_rest)
    assert len(groups) == blocks + include_rest
    storages = {tensor.untyped_storage().data_ptr() for group in groups for tensor in group}
    assert len(storages) == len(groups)  # one buffer per group
    # the same weights, now views of the group buffers (on the CPU, vector kernels may sum in another order at
    # another alignment; on CUDA the forward reads the device copies)
    torch.testing.assert_close(module(**inputs)[0], before, rtol=1e-5, atol=1e-6)
    placement.unpin(module)
    assert placement.pinned_bytes(module) == 0

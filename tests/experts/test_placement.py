"""Placement decisions and their application to tiny diffusers models (CPU)."""

from __future__ import annotations

import pytest
import torch
from diffusers.hooks import group_offloading

from poe_backend.experts import placement
from poe_backend.experts.model_cache import ModelCache
from poe_backend.experts.placement import Budget, apply_placement, auto_plan, placement_of

GIB = 2**30
FLUX_12B = 23_800_000_000  # bf16 bytes of a FLUX.1 transformer (11.9B parameters)


def test_auto_plan_never_moves_whole_models_for_alternating_experts():
    sizes = {"flux.transformer.depth": FLUX_12B, "flux.transformer.fill": FLUX_12B}
    activations = 4 * GIB
    assert set(auto_plan(sizes, activations, None).placements.values()) == {"resident"}
    assert set(auto_plan(sizes, activations, Budget(141 * GIB, 256 * GIB)).placements.values()) == {"resident"}
    # one model fits a 48 GB card, both do not: stream blocks, do not swap models
    assert set(auto_plan(sizes, activations, Budget(48 * GIB, 128 * GIB)).placements.values()) == {"group_offload"}
    assert set(auto_plan(sizes, activations, Budget(48 * GIB, 128 * GIB), allow_fp8=True).placements.values()) == {"fp8_resident"}
    plan = auto_plan(sizes, activations, Budget(24 * GIB, 64 * GIB), allow_fp8=True)
    assert set(plan.placements.values()) == {"group_offload"} and plan.to_json()["budget"]["device_bytes"] == 24 * GIB
    with pytest.raises(MemoryError, match="host RAM"):
        auto_plan(sizes, activations, Budget(24 * GIB, 32 * GIB))


def test_auto_offload_preset_is_never_model_for_several_models(monkeypatch):
    monkeypatch.setattr(Budget, "detect", classmethod(lambda cls, device: Budget(48 * GIB, 128 * GIB)))
    assert placement.Placement.for_sizes("auto", "cuda", [FLUX_12B, FLUX_12B]).preset == "group"
    assert placement.Placement.for_sizes("auto", "cuda", [FLUX_12B]).preset == "none"
    assert placement.choose_offload("cuda", 2 * FLUX_12B, FLUX_12B, alternating=False) == "model"


def test_explicit_offload_names_map_to_placements():
    assert placement.placement_for_offload("none") == "resident"
    assert placement.placement_for_offload("none", fp8_storage=True) == "fp8_resident"
    assert placement.placement_for_offload("group") == "group_offload"
    with pytest.raises(ValueError, match="model"):
        placement.placement_for_offload("model")
    with pytest.raises(ValueError, match="fp8_storage"):
        placement.placement_for_offload("group", fp8_storage=True)


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

"""Placement decisions and their application to tiny diffusers models (CPU)."""

from __future__ import annotations

import pytest
import torch
from diffusers.hooks import group_offloading

from poe_backend.experts import placement
from poe_backend.experts.model_cache import ModelCache
from poe_backend.experts.memory_plan import RolePlan
from poe_backend.experts.placement import apply_placement, placement_name, placement_of


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

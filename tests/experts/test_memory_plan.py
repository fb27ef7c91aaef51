"""Memory planner on the full-size configs (meta device, exact parameter counts)."""

from __future__ import annotations

import json

import pytest
import torch

from poe_backend.experts import memory_plan as mp
from poe_backend.experts.memory_plan import GiB, Budget, PlanError


@pytest.fixture(scope="module")
def insertion():
    return mp.insertion_job()


def _plan(job, card, ram, **kwargs):
    models, activation, decode, tiled = job
    return mp.plan(models, activation, decode, Budget.nominal(card, ram), alternating=len(models) > 1, tiled_decode_bytes=tiled, **kwargs)


def _placements(result):
    return {role.split(".")[-1]: (rp.placement, rp.fp8_storage) for role, rp in result.placements.items()}


def test_flux_transformer_size_matches_the_published_parameter_count():
    size = mp.full_size("flux.transformer.dev")
    assert 11.8e9 < size.weight_bytes / 2 < 11.95e9  # FLUX.1 [dev]: 11.9B parameters
    assert size.num_blocks == 19 + 38
    assert size.non_block_bytes + size.num_blocks * size.largest_block_bytes >= size.weight_bytes
    assert size.fp8_weight_bytes < 0.7 * size.weight_bytes  # attention/MLP linears in 1 byte


def test_wan_14b_sizes():
    for role in ("wan.transformer.vace", "wan.transformer.i2v"):
        size = mp.full_size(role)
        assert 14e9 < size.weight_bytes / 2 < 17.5e9, role


# The table the module docstring justifies (rules 2-4), fp8 allowed.
INSERTION_TABLE = {
    24: {"depth": ("resident", True), "fill": ("group_offload", True)},
    48: {"depth": ("resident", True), "fill": ("resident", True)},
    80: {"depth": ("resident", False), "fill": ("resident", False)},
    141: {"depth": ("resident", False), "fill": ("resident", False)},
}


@pytest.mark.parametrize("card", sorted(INSERTION_TABLE))
@pytest.mark.parametrize("ram", [32, 64, 128])
def test_insertion_grid(insertion, card, ram):
    result = _plan(insertion, card, ram)
    assert _placements(result) == INSERTION_TABLE[card]
    assert result.peak_vram_bytes <= Budget.nominal(card, ram).vram_free_bytes
    assert result.peak_host_bytes <= ram * GiB
    assert result.alternating and any("no whole-model moves" in reason for reason in result.reasons)
    assert json.loads(result.to_json())["placements"]["flux.transformer.fill"]["placement"] in mp.PLACEMENTS


def test_insertion_without_fp8_streams_bf16_and_refuses_on_small_ram(insertion):
    assert _placements(_plan(insertion, 48, 64, allow_fp8=False)) == {"depth": ("resident", False), "fill": ("group_offload", False)}
    assert _placements(_plan(insertion, 24, 64, allow_fp8=False)) == {"depth": ("group_offload", False), "fill": ("group_offload", False)}
    with pytest.raises(PlanError, match="host RAM.*allow fp8 storage"):
        _plan(insertion, 24, 32, allow_fp8=False)


def test_no_plan_moves_whole_models_per_evaluation(insertion):
    video = mp.sim2video_job()
    for job in (insertion, video):
        for card in (24, 48, 80, 141):
            for fp8 in (True, False):
                try:
                    result = _plan(job, card, 128, allow_fp8=fp8)
                except PlanError:
                    continue
                assert {rp.placement for rp in result.placements.values()} <= set(mp.PLACEMENTS)
    assert "model" not in mp.PLACEMENTS


def test_sim2video_plans_on_h200_and_80gb():
    job = mp.sim2video_job()
    assert _placements(_plan(job, 141, 64)) == {"vace": ("resident", False), "i2v": ("resident", False)}
    assert _placements(_plan(job, 80, 128)) == {"vace": ("resident", True), "i2v": ("resident", True)}
    streamed = _plan(job, 24, 128)
    assert {rp.placement for rp in streamed.placements.values()} == {"group_offload"}


def test_preview_is_all_resident_on_24gb():
    result = _plan(mp.sim2video_job(preview=True), 24, 32)
    assert _placements(result) == {"preview": ("resident", False)}
    assert not result.decode.free_transformers


def test_decode_frees_then_tiles_when_short():
    model = mp.ModelSize("m", 10 * GiB, 5 * GiB, 10, GiB, 0, GiB // 8)
    budget = Budget(int(14 * GiB), 64 * GiB)  # reserve 1 GiB -> 13 GiB room
    result = mp.plan([model], GiB, 4 * GiB, budget, alternating=False, tiled_decode_bytes=GiB)
    assert result.decode.free_transformers and not result.decode.tiled
    result = mp.plan([model], GiB, 20 * GiB, budget, alternating=False, tiled_decode_bytes=GiB)
    assert result.decode.tiled and result.decode.free_transformers


def test_activation_estimates_scale_with_tokens_and_batch():
    assert mp.flux_activation_bytes(4096, 512, 2) == 2 * mp.flux_activation_bytes(4096, 512, 1)
    assert mp.wan_activation_bytes(21, 60, 104, 2, vace_layers=8) > mp.wan_activation_bytes(21, 60, 104, 2)
    assert mp.vae_decode_bytes("wan", 81, 480, 832, True) < mp.vae_decode_bytes("wan", 81, 480, 832, False)

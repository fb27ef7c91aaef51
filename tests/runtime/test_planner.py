"""Memory planner on the full-size configs (meta device, exact parameter counts)."""

from __future__ import annotations

import json

import pytest
import torch

from poe_backend.runtime import planner
from poe_backend.runtime.planner import GiB, Budget, PlanError


@pytest.fixture(scope="module")
def insertion():
    return planner.insertion_job()


def _plan(job, card, ram, **kwargs):
    models, activation, decode, tiled = job
    return planner.plan(models, activation, decode, Budget.nominal(card, ram), alternating=len(models) > 1, tiled_decode_bytes=tiled, **kwargs)


def _placements(result):
    return {role.split(".")[-1]: (rp.placement, rp.fp8_storage) for role, rp in result.placements.items()}


def test_flux_transformer_size_matches_the_published_parameter_count():
    size = planner.full_size("flux.transformer.dev")
    assert 11.8e9 < size.weight_bytes / 2 < 11.95e9  # FLUX.1 [dev]: 11.9B parameters
    assert size.num_blocks == 19 + 38
    assert size.non_block_bytes + size.num_blocks * size.largest_block_bytes >= size.weight_bytes
    assert size.fp8_weight_bytes < 0.7 * size.weight_bytes  # attention/MLP linears in 1 byte


def test_wan_14b_sizes():
    for role in ("wan.transformer.vace", "wan.transformer.i2v"):
        size = planner.full_size(role)
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
    assert json.loads(result.to_json())["placements"]["flux.transformer.fill"]["placement"] in planner.PLACEMENTS


def test_insertion_without_fp8_streams_bf16_and_refuses_on_small_ram(insertion):
    assert _placements(_plan(insertion, 48, 64, allow_fp8=False)) == {"depth": ("resident", False), "fill": ("group_offload", False)}
    assert _placements(_plan(insertion, 24, 64, allow_fp8=False)) == {"depth": ("group_offload", False), "fill": ("group_offload", False)}
    with pytest.raises(PlanError, match="host RAM.*allow fp8 storage"):
        _plan(insertion, 24, 32, allow_fp8=False)


def test_no_plan_moves_whole_models_per_evaluation(insertion):
    video = planner.sim2video_job()
    for job in (insertion, video):
        for card in (24, 48, 80, 141):
            for fp8 in (True, False):
                try:
                    result = _plan(job, card, 128, allow_fp8=fp8)
                except PlanError:
                    continue
                assert {rp.placement for rp in result.placements.values()} <= set(planner.PLACEMENTS)
    assert "model" not in planner.PLACEMENTS


def test_sim2video_plans_on_h200_and_80gb():
    job = planner.sim2video_job()
    assert _placements(_plan(job, 141, 64)) == {"vace": ("resident", False), "i2v": ("resident", False)}
    assert _placements(_plan(job, 80, 128)) == {"vace": ("resident", True), "i2v": ("resident", True)}
    streamed = _plan(job, 24, 128)
    assert {rp.placement for rp in streamed.placements.values()} == {"group_offload"}


def test_preview_is_all_resident_on_24gb():
    result = _plan(planner.sim2video_job(preview=True), 24, 32)
    assert _placements(result) == {"preview": ("resident", False)}
    assert not result.decode.free_transformers


def test_wan_job_bytes_from_the_full_configs():
    """The Wan runtime's estimate (the same function, on the installed configs): the larger
    of the two forwards, VACE-14B with its 8 hints, at 832×480×81 (latent 21×60×104), P=2;
    the I2V model alone has no hints."""
    vace, i2v = (planner.full_configs()[role][1] for role in ("wan.transformer.vace", "wan.transformer.i2v"))
    activation, decode, tiled = planner.wan_job_bytes([vace, i2v], 81, 480, 832, 2)
    assert activation == planner.wan_activation_bytes(21, 60, 104, 2, vace_layers=8, hidden=5120)
    assert planner.wan_job_bytes([i2v], 81, 480, 832, 2)[0] == planner.wan_activation_bytes(21, 60, 104, 2, hidden=5120)
    assert (decode, tiled) == (planner.vae_decode_bytes("wan", 81, 480, 832, False), planner.vae_decode_bytes("wan", 81, 480, 832, True))


def test_framepack_job_reads_the_hidden_size_from_the_class_defaults():
    """The full FramePack config lists only what differs from the class defaults: hidden
    24 heads × 128 = 3072; two sections of 9 latent frames decode 73 frames."""
    config = planner.full_configs()["framepack.transformer"][1]
    activation, decode, _ = planner.framepack_job_bytes(config, 9, 2, 480, 832, 2)
    assert activation == planner.framepack_activation_bytes(9, 60, 104, 2, hidden=3072)
    assert decode == planner.vae_decode_bytes("framepack", 73, 480, 832, False)


def test_sim2video_ar_grid():
    """FramePack 13B (~24 GiB bf16): streamed on a 24 GiB card without fp8, resident from
    48 GiB. HunyuanVideo's VAE decodes 17 frames at a time even untiled, in fp32 (~26.6 GiB
    for 73 frames at 480x832, not the ~56 GiB of all frames at once): it fits beside the
    transformer from 80 GiB, so an H100 no longer frees and reloads the transformer every
    job; a 48 GiB card frees it first, a 24 GiB card also tiles."""
    job = planner.sim2video_ar_job()
    assert _placements(_plan(job, 24, 64, allow_fp8=False)) == {"transformer": ("group_offload", False)}
    assert _placements(_plan(job, 24, 64)) == {"transformer": ("resident", True)}
    for card, tiled, free in ((24, True, True), (48, False, True), (80, False, False), (141, False, False)):
        result = _plan(job, card, 64)
        assert (result.decode.tiled, result.decode.free_transformers) == (tiled, free), card
    assert _placements(_plan(job, 48, 32)) == {"transformer": ("resident", False)}


def test_plan_report_prints_every_job_on_every_card():
    table = planner.plan_report(cards_gib=(24, 141), rams_gib=(64,))
    for job in ("insertion 1024² P=2", "regional_t2i 1024²", "sim2video 832x480x81 P=2", "preview 1.3B", "sim2video_ar 832x480x73"):
        assert sum(line.startswith(job) for line in table.splitlines()) == 1, job
    assert "141 GiB card,  64 GiB RAM, fp8 off: vace=resident i2v=resident | decode full" in table
    assert planner.plan_report(["sim2video_ar"], cards_gib=(24,), rams_gib=(64,)).count("\n") == 2
    with pytest.raises(KeyError, match="toy2d"):
        planner.plan_report(["toy2d"])


def test_the_plan_counts_as_pinned_exactly_the_streamed_models_stored_bytes(insertion):
    """What the plan says is page-locked is what placement locks (one packed copy of each
    streamed model: tests/runtime/test_placement.py), and it is part of the host peak."""
    result = _plan(insertion, 24, 64)
    streamed = [model for model in insertion[0] if result.placements[model.role].placement == "group_offload"]
    assert streamed and result.pinned_host_bytes == sum(model.pinned_bytes("group_offload", result.placements[model.role].fp8_storage) for model in streamed)
    assert result.peak_host_bytes >= result.pinned_host_bytes + planner.HOST_BASELINE_BYTES
    assert _plan(insertion, 141, 64).pinned_host_bytes == 0


def test_decode_frees_then_tiles_when_short():
    model = planner.ModelSize("m", 10 * GiB, 5 * GiB, 10, GiB, 0, GiB // 8, 0)
    budget = Budget(int(14 * GiB), 64 * GiB)  # reserve 1 GiB -> 13 GiB room
    result = planner.plan([model], GiB, 4 * GiB, budget, alternating=False, tiled_decode_bytes=GiB)
    assert result.decode.free_transformers and not result.decode.tiled
    result = planner.plan([model], GiB, 20 * GiB, budget, alternating=False, tiled_decode_bytes=GiB)
    assert result.decode.tiled and result.decode.free_transformers


def test_video_decodes_are_counted_in_fp32_and_hunyuan_video_in_17_frame_chunks():
    """The Wan and HunyuanVideo VAEs run in fp32; HunyuanVideo's framewise decoding holds 17
    pixel frames of the decoder at a time whatever the clip length."""
    output = 73 * 3 * 480 * 832 * 4
    assert planner.vae_decode_bytes("framepack", 73, 480, 832, False) == 1024 * 17 * 480 * 832 * 4 + 2 * output
    assert planner.vae_decode_bytes("framepack", 145, 480, 832, False) - planner.vae_decode_bytes("framepack", 73, 480, 832, False) == 2 * output * 72 // 73
    assert planner.vae_decode_bytes("wan", 81, 480, 832, False) == 768 * 4 * 480 * 832 * 4 + 81 * 3 * 480 * 832 * 4
    assert planner.vae_decode_bytes("flux", 1, 1024, 1024, False) == 1024 * 1024 * 1024 * 2 + 3 * 1024 * 1024 * 4  # FLUX's VAE runs in bf16


def test_activation_estimates_scale_with_tokens_and_batch():
    assert planner.flux_activation_bytes(4096, 512, 2) == 2 * planner.flux_activation_bytes(4096, 512, 1)
    assert planner.wan_activation_bytes(21, 60, 104, 2, vace_layers=8) > planner.wan_activation_bytes(21, 60, 104, 2)
    assert planner.vae_decode_bytes("wan", 81, 480, 832, True) < planner.vae_decode_bytes("wan", 81, 480, 832, False)


_MEASURE = """
import ctypes, sys, torch
torch.manual_seed(0); torch.set_num_threads(1)
def status(key):
    with open("/proc/self/status", encoding="ascii") as lines:
        return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(key))
{build}
with torch.no_grad():
    run()  # warm-up: lazy initialisation is not counted
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand the warm-up's freed heap back to the OS
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
        clear.write("5")
    before = status("VmRSS:")
    run()
    print(status("VmHWM:") - before)
"""


def _rss_peak_bytes(build: str) -> int:
    """Extra resident bytes at the peak of ``run()`` (defined by ``build``), measured in a
    fresh process (Linux VmHWM after clear_refs), so no earlier test's freed heap hides it."""
    import os
    import subprocess
    import sys

    # A fixed mmap threshold keeps glibc from raising it after the warm-up frees its large
    # buffers; otherwise the measured run reuses heap that is already resident and the peak
    # reads 0 on some machines.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run([sys.executable, "-c", _MEASURE.format(build=build)], capture_output=True, text=True, timeout=300, check=True, env=env)
    return int(done.stdout.split()[-1])


def test_flux_activation_estimate_matches_a_cpu_forward_within_a_small_factor():
    """Order of magnitude on CPU (fp32, SDPA, 1 thread): FLUX blocks at 1/8 of the real width
    (one double, one single), 4096 image + 64 text tokens. Measured ≈ 0.7× the estimate
    (108 MiB against 146 MiB); unverified on a GPU."""
    peak = _rss_peak_bytes("""
from diffusers import FluxTransformer2DModel
tokens, text = 4096, 64
model = FluxTransformer2DModel(
    in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=64, num_attention_heads=6,
    joint_attention_dim=64, pooled_projection_dim=32, axes_dims_rope=(8, 28, 28),
).eval()
inputs = dict(
    hidden_states=torch.randn(1, tokens, 64), encoder_hidden_states=torch.randn(1, text, 64),
    pooled_projections=torch.randn(1, 32), timestep=torch.tensor([0.5]),
    img_ids=torch.zeros(tokens, 3), txt_ids=torch.zeros(text, 3),
)
run = lambda: model(**inputs)
""")
    estimate = planner.flux_activation_bytes(4096, 64, 1, hidden=384) * 2  # fp32 here
    assert estimate / 4 < peak < estimate * 2.5, (peak, estimate)  # RSS can only undercount (paging)


def test_flux_vae_decode_estimate_matches_a_cpu_decode_within_a_small_factor():
    """The real FLUX VAE decoder (fp32 on CPU) at 128²: the estimate is linear in pixels."""
    peak = _rss_peak_bytes("""
from diffusers import AutoencoderKL
from benchmarks.bench_image import FLUX_VAE
vae = AutoencoderKL(**FLUX_VAE).eval()
latents = torch.randn(1, 16, 16, 16)
run = lambda: vae.decode(latents)
""")
    estimate = 2 * planner.vae_decode_bytes("flux", 1, 128, 128, tiled=False)  # fp32 here
    assert estimate / 4 < peak < estimate * 2.5, (peak, estimate)  # RSS can only undercount (paging)


def test_refusals_under_small_budgets_name_sizes_in_mib():
    """A budget under 1 GiB (a shared card, a test) gets sizes that say something, not '0.0 GiB of 0.0 GiB'."""
    model = planner.ModelSize("m", 300 * 2**20, 150 * 2**20, 10, 30 * 2**20, 0, 2**20, 0)
    with pytest.raises(PlanError, match=r"VAE decode needs 600\.0 MiB of"):
        planner.plan([model], 2**20, 600 * 2**20, Budget(GiB + 500 * 2**20, 64 * GiB), alternating=False)


@pytest.mark.parametrize("role", ["wan.transformer.vace", "wan.transformer.i2v", "flux.transformer.depth", "framepack.transformer"])
def test_planned_size_is_what_from_pretrained_loads_in_bf16(role):
    """The planner's bytes equal the loaded module's in bf16, dtype by dtype: diffusers keeps
    Wan's ``_keep_in_fp32_modules`` in fp32, and buffers built by the constructor stay fp32."""
    from poe_backend.models.lookup import resolve
    from poe_backend.models.specs import get_spec
    from poe_backend.runtime.cache import _from_pretrained
    from poe_backend.runtime.placement import parameter_bytes

    loaded = _from_pretrained(get_spec(role, "tiny"), str(resolve(role, "tiny")), torch.bfloat16, "cpu")
    assert planner.installed_size(role, "tiny").weight_bytes == parameter_bytes(loaded)

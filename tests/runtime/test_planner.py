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
    return job.plan(Budget.nominal(card, ram), **kwargs)


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


# The table the module docstring justifies (rules 2-4 and 9), fp8 allowed: placements for one
# particle, so at 48 GiB both stay bf16 (44.3 GiB + 0.6 GiB of one particle's activations)
# and the two particles go through one at a time, where fitting both in one forward would
# need fp8 storage.
INSERTION_TABLE = {
    24: {"depth": ("resident", True), "fill": ("group_offload", True)},
    48: {"depth": ("resident", False), "fill": ("resident", False)},
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
    assert _placements(_plan(insertion, 48, 64, allow_fp8=False)) == {"depth": ("resident", False), "fill": ("resident", False)}  # one particle at a time
    assert _placements(_plan(insertion, 48, 64, allow_fp8=False, max_batch=2)) == {"depth": ("resident", False), "fill": ("group_offload", False)}
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
    assert _placements(_plan(job, 80, 128)) == {"vace": ("resident", False), "i2v": ("resident", False)}  # one particle per forward
    assert _placements(_plan(job, 80, 128, max_batch=2)) == {"vace": ("resident", True), "i2v": ("resident", True)}
    streamed = _plan(job, 24, 128)
    assert {rp.placement for rp in streamed.placements.values()} == {"group_offload"}


def test_preview_is_all_resident_on_24gb():
    result = _plan(planner.sim2video_job(preview=True), 24, 32)
    assert _placements(result) == {"preview": ("resident", False)}
    assert not result.decode.free_transformers


def test_wan_job_bytes_from_the_full_configs():
    """The Wan runtime's estimate (the same function, on the installed configs): one
    particle's larger forward, VACE-14B with its 8 hints, at 832×480×81 (latent 21×60×104);
    the I2V model alone has no hints; a conditioned VACE makes its aligned pass the largest."""
    configs = {role: planner.full_configs()[role][1] for role in ("wan.transformer.vace", "wan.transformer.i2v")}
    activation, decode, tiled = planner.wan_job_bytes(configs, 81, 480, 832)
    assert activation == planner.wan_activation_bytes(21, 60, 104, 1, vace_layers=8, hidden=5120)
    assert planner.wan_job_bytes({"wan.transformer.i2v": configs["wan.transformer.i2v"]}, 81, 480, 832)[0] == planner.wan_activation_bytes(21, 60, 104, 1, hidden=5120)
    assert (decode, tiled) == (planner.vae_decode_bytes("wan", 81, 480, 832, False), planner.vae_decode_bytes("wan", 81, 480, 832, True))
    conditioned = planner.wan_job_bytes(configs, 81, 480, 832, conditioned=["wan.transformer.vace"])[0]
    assert conditioned == planner.wan_conditioned_bytes(21, 60, 104, 1, vace_layers=8, hidden=5120, blocks=40) > 6 * activation


def test_framepack_job_reads_the_hidden_size_from_the_class_defaults():
    """The full FramePack config lists only what differs from the class defaults: hidden
    24 heads × 128 = 3072; two sections of 9 latent frames decode 73 frames."""
    config = planner.full_configs()["framepack.transformer"][1]
    activation, decode, _ = planner.framepack_job_bytes(config, 9, 2, 480, 832)
    assert activation == planner.framepack_activation_bytes(9, 60, 104, 1, hidden=3072)
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
    for job in (label for jobs in planner.TASK_JOBS.values() for label in jobs):
        assert sum(line.startswith(f"{job}:") for line in table.splitlines()) == 1, job
    assert "141 GiB card,  64 GiB RAM, fp8 off: vace=resident i2v=resident | 2 of 2 particles per forward | decode full" in table
    assert planner.plan_report(["sim2video_ar"], cards_gib=(24,), rams_gib=(64,)).count("\n") == 2
    with pytest.raises(KeyError, match="toy2d"):
        planner.plan_report(["toy2d"])


def test_the_plan_counts_as_pinned_exactly_the_streamed_models_stored_bytes(insertion):
    """What the plan says is page-locked is what placement locks (one packed copy of each
    streamed model: tests/runtime/test_placement.py), and it is part of the host peak."""
    result = _plan(insertion, 24, 64)
    streamed = [model for model in insertion.models if result.placements[model.role].placement == "group_offload"]
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


#: Builds of the measured runs: each defines ``run()``, measured by :data:`_MEASURE`.
_BUILDS = {
    # FLUX blocks at 1/8 of the real width (one double, one single), 4096 image + 64 text tokens.
    "flux-forward": """
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
""",
    # The real FLUX VAE decoder at 128².
    "flux-vae-decode": """
from diffusers import AutoencoderKL
from benchmarks.bench_image import FLUX_VAE
vae = AutoencoderKL(**FLUX_VAE).eval()
latents = torch.randn(1, 16, 16, 16)
run = lambda: vae.decode(latents)
""",
}

#: Reads ``{name: build}`` (JSON) on stdin, imports what the builds import once, then forks a
#: child per build: each child starts from the state a fresh process has after those imports,
#: builds, runs once (warm-up: lazy initialisation is not counted), hands the freed heap back
#: to the OS, resets the peak, runs again and prints ``peak <name> <bytes>``.
_MEASURE = """
import ctypes, json, os, sys, traceback
import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from benchmarks.bench_image import FLUX_VAE
torch.set_num_threads(1)

def status(key):
    with open("/proc/self/status", encoding="ascii") as lines:
        return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(key))

def peak_bytes(build):
    torch.manual_seed(0)
    scope = {"torch": torch}
    exec(build, scope)
    with torch.no_grad():
        scope["run"]()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
        before = status("VmRSS:")
        scope["run"]()
        return status("VmHWM:") - before

for name, build in json.loads(sys.stdin.read()).items():
    child = os.fork()
    if child == 0:
        try:
            print("peak", name, peak_bytes(build), flush=True)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitpid(child, 0)[1] != 0:
        sys.exit(f"measuring {name!r} failed")
"""


@pytest.fixture(scope="module")
def rss_peaks() -> dict[str, int]:
    """Extra resident bytes at the peak of each build's ``run()`` (:data:`_BUILDS`), each
    measured in a process of its own (Linux VmHWM after clear_refs), so no earlier test's
    freed heap hides it: one Python start and one diffusers import (~5 s) for all of them,
    then a fork per build."""
    import os
    import subprocess
    import sys

    # A fixed mmap threshold keeps glibc from raising it after the warm-up frees its large
    # buffers; otherwise the measured run reuses heap that is already resident and the peak
    # reads 0 on some machines.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run([sys.executable, "-c", _MEASURE], input=json.dumps(_BUILDS), capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    peaks = {name: int(value) for _, name, value in (line.split() for line in done.stdout.splitlines() if line.startswith("peak "))}
    assert set(peaks) == set(_BUILDS), done.stdout + done.stderr
    return peaks


def test_flux_activation_estimate_matches_a_cpu_forward_within_a_small_factor(rss_peaks):
    """Order of magnitude on CPU (fp32, SDPA, 1 thread): FLUX blocks at 1/8 of the real width
    (one double, one single), 4096 image + 64 text tokens. Measured ≈ 0.7× the estimate
    (108 MiB against 146 MiB); unverified on a GPU."""
    peak = rss_peaks["flux-forward"]
    estimate = planner.flux_activation_bytes(4096, 64, 1, hidden=384) * 2  # fp32 here
    assert estimate / 4 < peak < estimate * 2.5, (peak, estimate)  # RSS can only undercount (paging)


def test_flux_vae_decode_estimate_matches_a_cpu_decode_within_a_small_factor(rss_peaks):
    """The real FLUX VAE decoder (fp32 on CPU) at 128²: the estimate is linear in pixels."""
    peak = rss_peaks["flux-vae-decode"]
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


# ---------------------------------------------------------------------------------------
# Micro-batches (rule 9) and conditioned experts (rule 8)


def test_micro_batch_is_the_fewest_equal_micro_batches_that_fit():
    assert planner.micro_batch(32, 10, 1000) == 32
    assert planner.micro_batch(32, 10, 310) == 16  # room for 31: two of 16, not 31 + 1
    assert planner.micro_batch(32, 10, 85) == 8
    assert planner.micro_batch(5, 10, 20) == 2  # 2 + 2 + 1
    assert planner.micro_batch(32, 10, 5) == 1  # the placement was chosen for one
    assert planner.micro_batch(32, 0, 0) == 32  # activations that cost nothing


def test_placements_are_chosen_for_one_particle_then_the_micro_batch_fills_the_room():
    """10 GiB of weights (5 in fp8), 1 GiB per particle, 13 GiB of room, P = 8: bf16 stays
    resident and 3 + 3 + 2 particles go through a forward (not fp8 with all 8 at once); a
    task's max_batch = 8 plans the placements for 8 (fp8)."""
    model = planner.ModelSize("m", 10 * GiB, 5 * GiB, 10, GiB, 0, GiB // 8, 0)
    budget = Budget(14 * GiB, 64 * GiB)  # reserve 1 GiB -> 13 GiB room
    result = planner.plan([model], GiB, 0, budget, alternating=False, particles=8)
    assert (result.placements["m"], result.micro_batch) == (planner.RolePlan("resident", False), 3)
    assert result.peak_vram_bytes == 13 * GiB and json.loads(result.to_json())["micro_batch"] == 3
    assert "3 of 8 particles per forward" in result.describe()
    fixed = planner.plan([model], GiB, 0, budget, alternating=False, particles=8, max_batch=8)
    assert (fixed.placements["m"], fixed.micro_batch) == (planner.RolePlan("resident", True), 8)


def test_conditioned_models_are_never_streamed():
    """Rule 8: a conditioned expert's model stays resident (bf16 or fp8); the other model is
    streamed instead, and when nothing else can give way the plan refuses, saying why."""
    big, small = (planner.ModelSize(role, size * GiB, size * GiB // 2, 10, size * GiB // 10, 0, GiB // 64, 0) for role, size in (("big", 10), ("small", 6)))
    budget = Budget(8 * GiB, 64 * GiB)  # 7 GiB of room: not both in fp8 (8 GiB); one resident in fp8, the other streamed
    assert {role: rp.placement for role, rp in planner.plan([big, small], GiB // 4, 0, budget, alternating=True).placements.items()} == {"big": "group_offload", "small": "resident"}
    kept = planner.plan([big, small], GiB // 4, 0, budget, alternating=True, resident_roles=["big"])
    assert kept.placements["big"] == planner.RolePlan("resident", True) and kept.placements["small"].placement == "group_offload"
    with pytest.raises(PlanError, match="big, small stay resident"):
        planner.plan([big, small], GiB // 4, 0, budget, alternating=True, resident_roles=["big", "small"])


#: Particles per forward at P = 32, fp8 allowed, 128 GiB RAM (24 / 48 / 80 / 141 GiB cards):
#: regional FLUX.1 [dev] beside VQAScore-7B, plain forwards (0.63 GiB per particle); insertion
#: with Fill conditioned on Depth (its aligned pass, 2.19 GiB per particle; Fill never
#: streamed); sim2video with VACE conditioned on I2V (41.2 GiB per particle: refused below 80;
#: on 141 GiB bf16 weights and one particle rather than fp8 and three).
MICRO_BATCHES = {
    "regional": (8, 11, 32, 32),
    "insertion conditioned": (3, 7, 11, 32),
    "sim2video conditioned": (None, None, 1, 1),
}


@pytest.mark.parametrize("name", sorted(MICRO_BATCHES))
def test_micro_batches_of_32_particles_at_full_size(name):
    job = {
        "regional": planner.regional_t2i_job(particles=32),
        "insertion conditioned": planner.insertion_job(particles=32, conditioned=("flux.transformer.fill",)),
        "sim2video conditioned": planner.sim2video_job(particles=32, conditioned=("wan.transformer.vace",)),
    }[name]
    for card, expected in zip((24, 48, 80, 141), MICRO_BATCHES[name]):
        if expected is None:
            with pytest.raises(PlanError, match="stay resident"):
                _plan(job, card, 128)
            continue
        result = _plan(job, card, 128)
        assert result.micro_batch == expected, card
        assert result.peak_vram_bytes <= Budget.nominal(card, 128).vram_free_bytes - job.held_bytes
        assert all(result.placements[role].placement == "resident" for role in job.conditioned)


def test_conditioned_estimates_at_full_size():
    """FLUX 1024² (4096 + 512 tokens) and Wan 832×480×81 (32760 tokens), bf16, per particle."""
    assert planner.flux_conditioned_bytes(4096, 512, 1) == 4608 * 3072 * 2 * (57 + 2 + 24)
    assert planner.wan_conditioned_bytes(21, 60, 104, 1, vace_layers=8) == 32760 * 5120 * 2 * (2 * (48 + 4) + 28)
    assert planner.wan_conditioned_bytes(21, 60, 104, 1) == 32760 * 5120 * 2 * (2 * (40 + 4) + 28)
    assert planner.flux_conditioned_bytes(4096, 512, 2) == 2 * planner.flux_conditioned_bytes(4096, 512, 1)


class SavedBytes:
    """Bytes autograd keeps for the backward of one forward with grad w.r.t. ``hidden_states``
    (weights frozen): every tensor packed by ``torch.autograd.graph.saved_tensors_hooks``
    plus the inputs gradient checkpointing holds for its recompute (recorded by the
    checkpoint function handed to diffusers; the checkpointed blocks' own saves go to
    torch.utils.checkpoint's inner hooks), each storage once, parameters and inputs not
    counted."""

    def __init__(self, model: torch.nn.Module, inputs: dict, checkpointed: bool) -> None:
        self.storages: dict[int, int] = {}
        if checkpointed:
            model.enable_gradient_checkpointing(gradient_checkpointing_func=self._checkpoint)
        else:
            model.disable_gradient_checkpointing()
        x = inputs["hidden_states"].clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(self._keep, lambda tensor: tensor):
            self.output = model(**{**inputs, "hidden_states": x}, return_dict=False)[0]
        excluded = [*model.parameters(), *model.buffers(), *inputs.values(), x]
        self.bytes = sum(size for pointer, size in self.storages.items() if pointer not in {t.untyped_storage().data_ptr() for t in excluded if isinstance(t, torch.Tensor)})

    def _keep(self, tensor: torch.Tensor) -> torch.Tensor:
        self.storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    def _checkpoint(self, function, *args, **kwargs):
        for arg in args:
            for tensor in arg if isinstance(arg, tuple) else (arg,):
                if isinstance(tensor, torch.Tensor):
                    self._keep(tensor)
        return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False, **kwargs)


def _flux(double: int, single: int, tokens: int = 256, text: int = 64):
    """FLUX at 1/8 width (6 heads of 64), bf16, and its inputs."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(in_channels=64, num_layers=double, num_single_layers=single, attention_head_dim=64, num_attention_heads=6, joint_attention_dim=64,
                                   pooled_projection_dim=32, axes_dims_rope=(8, 28, 28), guidance_embeds=True).to(torch.bfloat16).eval().requires_grad_(False)
    inputs = dict(hidden_states=torch.randn(1, tokens, 64, dtype=torch.bfloat16), encoder_hidden_states=torch.randn(1, text, 64, dtype=torch.bfloat16),
                  pooled_projections=torch.randn(1, 32, dtype=torch.bfloat16), timestep=torch.full((1,), 0.5, dtype=torch.bfloat16), guidance=torch.full((1,), 3.5),
                  img_ids=torch.zeros(tokens, 3), txt_ids=torch.zeros(text, 3))
    return model, inputs


def _wan(layers: int, vace_layers: list[int] | None = None):
    """Wan at 1/20 width (4 heads of 64, FFN 2.7×), bf16, 3 latent frames of 16×16 (192
    tokens), 32 text tokens, and its inputs."""
    from diffusers import WanTransformer3DModel, WanVACETransformer3DModel

    torch.manual_seed(0)
    config = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=64, in_channels=16, out_channels=16, text_dim=32, freq_dim=32, ffn_dim=691,
                  num_layers=layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=128)
    model = WanVACETransformer3DModel(vace_layers=vace_layers, vace_in_channels=96, **config) if vace_layers else WanTransformer3DModel(**config)
    planner._as_loaded(model, torch.bfloat16)  # norms, time embedder and modulation in fp32, as from_pretrained keeps them
    inputs = dict(hidden_states=torch.randn(1, 16, 3, 16, 16, dtype=torch.bfloat16), timestep=torch.full((1,), 500.0), encoder_hidden_states=torch.randn(1, 32, 32, dtype=torch.bfloat16))
    if vace_layers:
        inputs["control_hidden_states"] = torch.randn(1, 96, 3, 16, 16, dtype=torch.bfloat16)
    return model.eval().requires_grad_(False), inputs


def test_flux_conditioned_estimate_has_the_structure_autograd_saves():
    """Counted on FLUX blocks (1/8 width, bf16, CPU): checkpointed, each block adds exactly
    its input, (image + text tokens) · hidden (the formula's per-block term), and what is saved
    outside the blocks stays under FLUX_OUTSIDE_SAVED such tensors; not checkpointed, a block
    saves 0.8-1× FLUX_BLOCK_SAVED of them (14.2 double, 13.1 single), which the backward of the
    recomputed block needs again, and the whole model ~10× the checkpointed one."""
    unit = (256 + 64) * 384 * 2
    checkpointed = {blocks: SavedBytes(*_flux(*blocks), checkpointed=True).bytes for blocks in ((1, 1), (2, 1), (1, 2))}
    assert checkpointed[(2, 1)] - checkpointed[(1, 1)] == unit and checkpointed[(1, 2)] - checkpointed[(1, 1)] == unit
    assert checkpointed[(1, 1)] <= (2 + planner.FLUX_OUTSIDE_SAVED) * unit
    plain = {blocks: SavedBytes(*_flux(*blocks), checkpointed=False).bytes for blocks in ((1, 1), (2, 1), (1, 2))}
    for per_block in (plain[(2, 1)] - plain[(1, 1)], plain[(1, 2)] - plain[(1, 1)]):
        assert 0.8 * planner.FLUX_BLOCK_SAVED * unit <= per_block <= planner.FLUX_BLOCK_SAVED * unit
    assert plain[(1, 1)] > 6 * checkpointed[(1, 1)]


def test_wan_conditioned_estimate_has_the_structure_autograd_saves():
    """Counted on Wan blocks (1/20 width, bf16, CPU): checkpointed, each block and each VACE
    block adds exactly its video tokens' input (the text is shared), what is saved outside
    stays under WAN_OUTSIDE_SAVED (3.2 here); not checkpointed, a block saves 0.8-1×
    WAN_BLOCK_SAVED (21.2 at this width: its norms and rope run in fp32)."""
    unit = 192 * 256 * 2
    one, two, vace = (SavedBytes(*_wan(*layers), checkpointed=True).bytes for layers in ((1,), (2,), (4, [0, 2])))
    assert two - one == unit and abs(vace - one - (3 + 2) * unit) < unit / 100  # (a 4-byte scale aside)
    assert one <= (1 + planner.WAN_OUTSIDE_SAVED) * unit
    per_block = SavedBytes(*_wan(2), checkpointed=False).bytes - SavedBytes(*_wan(1), checkpointed=False).bytes
    assert 0.8 * planner.WAN_BLOCK_SAVED * unit <= per_block <= planner.WAN_BLOCK_SAVED * unit

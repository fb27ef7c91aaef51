"""Video-task benchmark rows: seconds per sampler level, peak VRAM and the share of time
spent outside expert forwards, for full-size architectures with random weights (nothing to
download), per offload preset.

Rows (one per task × offload preset):

* ``sim2video`` — Wan2.1 VACE-14B (depth control) × Wan2.1 I2V-14B at 832×480×49 frames
  (latent 16×13×60×104), true CFG 5 on both (4 forwards per product evaluation);
  ``sim2video-preview`` — VACE-1.3B serving as both experts (shared mode) at 416×240×33.
* ``sim2video_ar`` — FramePack (HunyuanVideo 13B) × the Gaussian render expert, one
  section of 9 latent frames at 832×480 conditioned on two earlier sections.

Conditioning tensors (prompt/image embeddings, VACE control, history) are random of the
real shapes; the encoders and the VAE are not timed (they run once per job). A level is
one transport step plus ``langevin_steps`` Langevin steps of ``sample_fkc``; s/level =
sampler wall time / (levels - 1), as ``benchmarks/gpu_tasks.py`` reports it.

Models are built with ``benchmarks.common.random_model`` (meta device, ``to_empty`` on the
target device, bf16 on CUDA, init there), then placed; the VRAM peak counter and the host
RSS high-water are reset after that, so offload rows measure the run, not the build. Each
row drops every reference to its models before the next starts. Columns: s/level, s per
batched forward (one expert, all particles), s per job (sampler wall time), peak VRAM and
peak host RSS.

Usage: ``python -m benchmarks.gpu_video [--offload none group ...] [--particles 1]``. Off
CUDA it says it needs a GPU and runs a tiny smoke table (same code, tiny configs) instead.
``run(settings)`` returns rows for ``benchmarks/gpu_tasks.py``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from poe_backend.runtime.planner import full_configs  # noqa: E402
from benchmarks.common import ForwardClock, Row, peak_host, peak_vram, random_model, synchronize, table  # noqa: E402

OFFLOADS = ("none", "group", "sequential")

_VACE_KEYS = ("in_channels", "vace_layers", "vace_in_channels")  # set per row below
WAN_14B = {k: v for k, v in full_configs()["wan.transformer.vace"][1].items() if k not in _VACE_KEYS}
WAN_1_3B = {k: v for k, v in full_configs()["wan.transformer.vace.preview"][1].items() if k not in _VACE_KEYS}
WAN_TINY = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2,
    cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
)
FRAMEPACK_13B = dict(in_channels=16, out_channels=16, has_image_proj=True, image_proj_dim=1152, has_clean_x_embedder=True, image_condition_type=None, guidance_embeds=True)
FRAMEPACK_TINY = dict(
    in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=10, num_layers=1, num_single_layers=1, num_refiner_layers=1,
    text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4), has_image_proj=True, image_proj_dim=32, has_clean_x_embedder=True,
    image_condition_type=None, guidance_embeds=True,
)


def _measure(task: str, variant: str, offload: str, resolution: str, particles: int, device: str, experts: list, event_shape: tuple, levels: int, langevin_steps: int) -> Row:
    """Run the sampler once; the peak counters start here, after the models were built and
    placed. Drops its own references to the experts before returning."""
    from poe_backend.sampling import Factor, ProductOfExperts, sample_fkc
    from poe_backend.sampling.schedules import linear_levels
    from poe_backend.tasks.sim2video import Sim2VideoParams

    clock = ForwardClock(device)
    product = ProductOfExperts([Factor(clock.wrap(expert)) for expert in experts])
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn((particles, *event_shape), generator=generator).to(device)
    forwards_before = sum(getattr(expert, "forward_count", 0) for expert in experts)
    with peak_vram(device) as vram, peak_host() as host:
        start = time.perf_counter()
        sample_fkc(
            product, noise, linear_levels(levels, t_max=0.95), generator=generator, langevin_steps=langevin_steps,
            step_scale=Sim2VideoParams().step_scale, metropolis=Sim2VideoParams().metropolis,
        )
        synchronize(device)
        total = time.perf_counter() - start
        peak_gib, host_gib = vram(), host()
    forwards = sum(getattr(expert, "forward_count", 0) for expert in experts) - forwards_before
    nfe = product.nfe
    del product
    per_forward = clock.seconds / clock.calls if clock.calls else None
    return Row(task, variant, offload, resolution, particles, total / (levels - 1), peak_gib, 1.0 - clock.seconds / total, nfe, f"{forwards} transformer forwards", per_forward, total, host_gib)


def _place(modules: list[torch.nn.Module], offload: str, device: str) -> None:
    from poe_backend.runtime.placement import apply_placement, placement_for_offload

    for module in modules:
        apply_placement(module, placement_for_offload(offload), device)


def bench_sim2video(device: str, offload: str, full: bool, preview: bool, particles: int, levels: int, langevin_steps: int) -> Row:
    from diffusers import WanTransformer3DModel, WanVACETransformer3DModel

    from poe_backend.families.wan.experts import WanI2VExpert, WanVACEExpert, latent_shape

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if full and preview:
        config, vace_layers, (frames, height, width), variant = WAN_1_3B, list(range(0, 30, 2)), (33, 240, 416), "VACE-1.3B shared"
    elif full:
        config, vace_layers, (frames, height, width), variant = WAN_14B, list(range(0, 40, 5)), (49, 480, 832), "VACE-14B x I2V-14B"
    else:
        config, vace_layers, (frames, height, width), variant = WAN_TINY, [0], (5, 32, 32), "tiny"
    text_dim = config["text_dim"]
    shape = latent_shape(frames, height, width)
    vace = random_model(lambda: WanVACETransformer3DModel(in_channels=16, vace_layers=vace_layers, vace_in_channels=96, **config), device, dtype)
    modules = [vace]

    def rand(*size: int) -> torch.Tensor:
        return torch.randn(*size, device=device, dtype=dtype)

    prompt, negative = rand(1, 512, text_dim), rand(1, 512, text_dim)
    experts = [WanVACEExpert(vace, rand(1, 96, *shape[1:]), prompt, negative, 5.0)]
    if preview:
        experts.append(WanVACEExpert(vace, rand(1, 96, *shape[1:]), prompt, negative, 5.0))
    else:
        image_dim = 1280 if full else 8
        inner = config["num_attention_heads"] * config["attention_head_dim"]
        i2v = random_model(lambda: WanTransformer3DModel(in_channels=36, image_dim=image_dim, added_kv_proj_dim=inner, **config), device, dtype)
        modules.append(i2v)
        experts.append(WanI2VExpert(i2v, rand(1, 20, *shape[1:]), rand(1, 257 if full else 5, image_dim), prompt, negative, 5.0))
    _place(modules, offload, device)
    row = _measure("sim2video", variant, offload, f"{width}x{height}x{frames}", particles, device, experts, shape, levels, langevin_steps)
    del experts, modules, vace
    if not preview:
        del i2v
    _free()
    return row


def bench_sim2video_ar(device: str, offload: str, full: bool, particles: int, levels: int, langevin_steps: int) -> Row:
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    from poe_backend.families.framepack.experts import FramePackSectionExpert, PromptEmbeddings, section_conditioning
    from poe_backend.families.analytic.render_gaussian import RenderGaussianExpert

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    config = FRAMEPACK_13B if full else FRAMEPACK_TINY
    window, (height, width) = (9, (480, 832)) if full else (1, (32, 32))
    text_dim, pooled_dim, image_dim = (4096, 768, 1152) if full else (16, 8, 32)
    transformer = random_model(lambda: HunyuanVideoFramepackTransformer3DModel(**config), device, dtype)
    _place([transformer], offload, device)
    latent = (16, window, height // 8, width // 8)

    def rand(*size: int) -> torch.Tensor:
        return torch.randn(*size, device=device)

    history = [rand(particles, *latent), rand(particles, *latent)]
    conditioning = section_conditioning(rand(particles, 16, 1, *latent[2:]), history, 2, 3, window, "inverted")
    prompt = PromptEmbeddings(rand(1, 256, text_dim), torch.ones(1, 256, device=device), rand(1, pooled_dim))
    experts = [
        FramePackSectionExpert(transformer, conditioning, prompt, rand(1, 729 if full else 4, image_dim), 10.0),
        RenderGaussianExpert(rand(*latent), 0.5),
    ]
    row = _measure("sim2video_ar", "FramePack-13B x render" if full else "tiny", offload, f"{width}x{height}, section of {window}", particles, device, experts, latent, levels, langevin_steps)
    del experts, transformer
    _free()
    return row


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def video_rows(device: str, full: bool, offloads: tuple[str, ...] = OFFLOADS, particles: int = 1, levels: int = 3, langevin_steps: int = 1, tasks: tuple[str, ...] = ()) -> list[Row]:
    """Every row; a configuration that fails (e.g. out of memory under ``none``) gives a
    row with the error as its note instead of stopping the table."""

    def wants(task: str) -> bool:
        return not tasks or task in tasks

    jobs = []
    for offload in offloads:
        if wants("sim2video"):
            jobs.append((f"sim2video/{offload}", lambda o=offload: bench_sim2video(device, o, full, False, particles, levels, langevin_steps)))
            if full:
                jobs.append((f"sim2video-preview/{offload}", lambda o=offload: bench_sim2video(device, o, full, True, particles, levels, langevin_steps)))
        if wants("sim2video_ar"):
            jobs.append((f"sim2video_ar/{offload}", lambda o=offload: bench_sim2video_ar(device, o, full, particles, levels, langevin_steps)))
    rows = []
    for name, job in jobs:
        try:
            rows.append(job())
        except Exception as error:  # noqa: BLE001 - a benchmark row records any failure
            task, offload = name.split("/")
            rows.append(Row(task, "-", offload, "-", particles, None, None, None, 0, f"failed: {type(error).__name__}: {str(error)[:80]}"))
            _free()
    return rows


def run(settings) -> list:
    """Entry point for ``benchmarks/gpu_tasks.py`` (``settings``: device, full, offloads,
    particles, levels, langevin_steps, tasks)."""
    return video_rows(settings.device, settings.full, tuple(settings.offloads), settings.particles, settings.levels, settings.langevin_steps, tuple(settings.tasks))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--offload", nargs="+", default=list(OFFLOADS), choices=OFFLOADS)
    parser.add_argument("--particles", type=int, default=1)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--langevin-steps", type=int, default=1)
    parser.add_argument("--task", nargs="*", default=[], choices=["sim2video", "sim2video_ar"])
    args = parser.parse_args(argv)
    if torch.cuda.is_available():
        device, full = "cuda", True
        print(f"GPU: {torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)")
    else:
        device, full = "cpu", False
        torch.set_num_threads(1)
        print("benchmarks/gpu_video.py needs a CUDA GPU for the full-size rows; running a tiny smoke table on the CPU instead.")
    print(table(video_rows(device, full, tuple(args.offload), args.particles, args.levels, args.langevin_steps, tuple(args.task))))


if __name__ == "__main__":
    main()

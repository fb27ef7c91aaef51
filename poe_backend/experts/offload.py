"""Placing big transformers on a device: offload presets shared by the video experts.

Presets (MODELS.md "Memory"): ``none`` (everything on the device), ``group`` (diffusers'
block-level group offloading, one block per group, CUDA streams: the safe choice when
several experts alternate), ``sequential`` (leaf-level group offloading: least memory,
slowest). ``auto`` picks from free VRAM and the model's size. Model-CPU-offload hooks are
not offered: they evict a model only when the next one in a pipeline's chain runs, which
our experts, called alternately by the sampler, do not form.
"""

from __future__ import annotations

from typing import Literal

import torch

OffloadPreset = Literal["auto", "none", "group", "sequential"]
OFFLOAD_PRESETS: tuple[str, ...] = ("auto", "none", "group", "sequential")


def module_bytes(module: torch.nn.Module) -> int:
    return sum(parameter.numel() * parameter.element_size() for parameter in module.parameters())


def choose_offload(total_bytes: int, device: torch.device | str, headroom: float = 0.35) -> str:
    """``none`` when the weights fit free VRAM with ``headroom`` (fraction of free memory
    kept for activations), ``group`` when the largest weights fit offloaded, else
    ``sequential``; always ``none`` off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return "none"
    free, _ = torch.cuda.mem_get_info(device)
    if total_bytes <= (1.0 - headroom) * free:
        return "none"
    return "group" if free > 8 * 2**30 else "sequential"


def place(module: torch.nn.Module, device: torch.device | str, preset: str) -> None:
    """Put ``module`` on ``device`` according to ``preset`` (not ``auto``: resolve it
    first with :func:`choose_offload`)."""
    device = torch.device(device)
    if preset == "none" or device.type == "cpu":
        module.to(device)
        return
    from diffusers.hooks import apply_group_offloading

    if preset == "group":
        apply_group_offloading(module, onload_device=device, offload_type="block_level", num_blocks_per_group=1, use_stream=True)
    elif preset == "sequential":
        apply_group_offloading(module, onload_device=device, offload_type="leaf_level", use_stream=True)
    else:
        raise ValueError(f"unknown offload preset {preset!r}; known: {', '.join(OFFLOAD_PRESETS)}")

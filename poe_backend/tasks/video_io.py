"""Reading bundle frames into tensors and writing videos, for the video tasks.

Conventions: frames are float tensors in [0, 1]; a video is ``(F, 3, H, W)``; depth is
``(F, H, W)`` camera-Z with ``+inf`` where nothing was hit (the bundle's convention, see
:mod:`poe_backend.bundle`). The backend, not the add-on, turns depth into what the experts
want: :func:`depth_to_disparity_video`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from poe_backend.bundle import Bundle, BundleError, capped_video_size


def read_first_frame(bundle: Bundle, relative: str, height: int, width: int) -> Tensor:
    """The ``first_frame`` parameter's image, a path relative to the bundle that must stay
    inside it (a job may come from a remote client: it must not read the server's files)."""
    root = bundle.root.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise BundleError("params.first_frame", f"must be a path inside the bundle, got {relative!r}")
    if not path.is_file():
        raise BundleError("params.first_frame", f"no image at {relative!r} in the bundle")
    return read_image(path, height, width, field="params.first_frame")


def read_image(path: Path, height: int, width: int, *, field: str) -> Tensor:
    """An RGB image ``(3, height, width)`` in [0, 1] (bicubic resize when sizes differ);
    :class:`BundleError` naming ``field`` when it cannot be read."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.BICUBIC)
            array = np.asarray(image, dtype=np.float32) / 255.0
    except (OSError, ValueError) as error:
        raise BundleError(field, f"cannot read image {path}: {error}") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def read_rgb_frames(bundle: Bundle, frames: list[int], height: int, width: int) -> Tensor:
    """The bundle's ``rgb`` pass at ``frames``: ``(F, 3, height, width)`` in [0, 1]."""
    return torch.stack([read_image(bundle.pass_path("rgb", frame), height, width, field="passes.rgb") for frame in frames])


def read_depth(path: Path, *, field: str) -> np.ndarray:
    """The float32 channel ``Z`` of an EXR, ``(H, W)``."""
    import OpenEXR

    try:
        with OpenEXR.File(str(path), separate_channels=True) as exr:
            channels = exr.channels()
            if "Z" not in channels:
                raise BundleError(field, f"{path.name} has no channel 'Z' (channels: {', '.join(channels)})")
            return np.asarray(channels["Z"].pixels, dtype=np.float32)
    except BundleError:
        raise
    except Exception as error:  # OpenEXR raises plain RuntimeError / OSError
        raise BundleError(field, f"cannot read depth {path}: {error}") from None


def read_depth_frames(bundle: Bundle, frames: list[int], height: int, width: int) -> Tensor:
    """The bundle's ``depth`` pass: ``(F, height, width)`` camera-Z, ``+inf`` background
    (nearest-neighbour resize, which keeps background pixels infinite)."""
    maps = []
    for frame in frames:
        depth = read_depth(bundle.pass_path("depth", frame), field="passes.depth")
        if depth.shape != (bundle.height, bundle.width):
            raise BundleError("passes.depth", f"frame {frame} is {depth.shape[1]}x{depth.shape[0]}, bundle says {bundle.width}x{bundle.height}")
        tensor = torch.from_numpy(depth)[None, None]
        if depth.shape != (height, width):
            tensor = torch.nn.functional.interpolate(tensor, size=(height, width), mode="nearest")
        maps.append(tensor[0, 0])
    return torch.stack(maps)


def depth_to_disparity_video(depth: Tensor) -> Tensor:
    """Camera-Z ``(F, H, W)`` -> normalised disparity video ``(F, 3, H, W)`` in [0, 1]:
    ``(1/z) / max(1/z)`` over the whole clip (one scale per clip, so motion in depth stays
    visible as brightness change), near = white, background (``+inf``, NaN, ``z <= 0``) = 0."""
    valid = torch.isfinite(depth) & (depth > 0)
    disparity = torch.where(valid, 1.0 / depth.clamp_min(1e-12), torch.zeros_like(depth))
    peak = disparity.max()
    if peak <= 0:
        raise BundleError("passes.depth", "every depth pixel is background (+inf); nothing to condition on")
    return (disparity / peak)[:, None].expand(-1, 3, -1, -1).contiguous()


def clip_frames(bundle: Bundle, num_frames: int | None, *, multiple: int = 4, strict: bool = True) -> list[int]:
    """The first ``num_frames`` scene frames (all by default), cut to the longest
    ``multiple·k + 1`` prefix (video VAEs need it); :class:`BundleError` when too few, or
    when ``strict`` and ``num_frames`` exceeds the bundle (else it is a cap)."""
    available = len(bundle.frames) if num_frames is None else min(num_frames, len(bundle.frames))
    if strict and num_frames is not None and num_frames > len(bundle.frames):
        raise BundleError("frames", f"num_frames={num_frames} but the bundle has {len(bundle.frames)} frames")
    usable = (available - 1) // multiple * multiple + 1
    if usable < multiple + 1:
        raise BundleError("frames", f"needs at least {multiple + 1} frames ({multiple}k+1), the bundle has {len(bundle.frames)}")
    return bundle.frames[:usable]


@dataclass(frozen=True)
class CappedSize:
    """What a video task generates: ``height``×``width`` pixels (multiples of 16) and at
    most ``max_frames`` frames (the frame count actually used is decided by the task's
    frame rule from this cap). ``capped_from`` is the bundle's ``{"width", "height",
    "num_frames"}`` when the cap changed any of them, else None; ``result.json`` records it."""

    height: int
    width: int
    max_frames: int
    capped_from: dict[str, int] | None


def capped_size(bundle: Bundle, height: int | None, width: int | None, num_frames: int | None, *, max_side: int, max_frames: int, multiple: int = 16) -> CappedSize:
    """The generation size of a video task (:func:`poe_backend.bundle.capped_video_size`,
    the rule the add-on shows). Unset sizes take the bundle's, scaled down (aspect kept) so
    the longer side is at most ``max_side`` and rounded down to ``multiple``; the frame cap
    is ``min(num_frames or all, max_frames)``. Explicit values above a cap raise
    :class:`BundleError` naming the field (``params.width``/``height``/``num_frames``)."""
    for name, value, limit in (("width", width, max_side), ("height", height, max_side), ("num_frames", num_frames, max_frames)):
        if value is not None and value > limit:
            raise BundleError(f"params.{name}", f"{name}={value} is above the cap max_{'side' if name != 'num_frames' else 'frames'}={limit}; raise the cap to generate it")
    capped_width, capped_height, _ = capped_video_size(bundle.width, bundle.height, len(bundle.frames), max_side=max_side, max_frames=max_frames, multiple=multiple)
    height = capped_height if height is None else height // multiple * multiple
    width = capped_width if width is None else width // multiple * multiple
    if height < multiple or width < multiple:
        raise BundleError("params.width", f"generation size must be at least {multiple}x{multiple}, got {width}x{height}")
    size_capped = (width, height) == (capped_width, capped_height) != (bundle.width, bundle.height)
    frames_capped = num_frames is None and len(bundle.frames) > max_frames
    changed = size_capped or frames_capped
    frame_cap = min(len(bundle.frames), max_frames)
    capped_from = {"width": bundle.width, "height": bundle.height, "num_frames": len(bundle.frames)} if changed else None
    return CappedSize(height, width, frame_cap if num_frames is None else num_frames, capped_from)


def to_uint8_frames(video: Tensor) -> np.ndarray:
    """``(F, 3, H, W)`` in [0, 1] -> ``(F, H, W, 3)`` uint8."""
    return (video.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def write_mp4(path: Path, video: Tensor, fps: float) -> Path:
    """H.264 MP4 through imageio-ffmpeg (yuv420p, so sizes are even: libx264 needs it)."""
    import imageio.v2 as imageio

    frames = to_uint8_frames(video)
    with imageio.get_writer(str(path), fps=float(fps), codec="libx264", quality=8, macro_block_size=2, pixelformat="yuv420p", ffmpeg_log_level="error") as writer:
        for frame in frames:
            writer.append_data(frame)
    return path


def write_particle_videos(out_dir: Path, decode, latents: Tensor, chosen: int, fps: float, save_particles: bool) -> dict[str, Path]:
    """``video.mp4`` from particle ``chosen`` of ``latents`` ``(P, ...)`` and, with
    ``save_particles``, every particle as ``particles/particle_NN.mp4``; ``decode`` maps a
    latent batch to videos ``(N, F, 3, H, W)`` in [0, 1]. Only the particles written are
    decoded. Returns the output names and paths."""
    indices = list(range(latents.shape[0])) if save_particles else [chosen]
    outputs: dict[str, Path] = {}
    for index, video in zip(indices, decode(latents[indices])):
        if index == chosen:
            outputs["video"] = write_mp4(out_dir / "video.mp4", video, fps)
        if save_particles:
            (out_dir / "particles").mkdir(exist_ok=True)
            outputs[f"particle_{index:02d}"] = write_mp4(out_dir / "particles" / f"particle_{index:02d}.mp4", video, fps)
    return outputs


def finite_log_weights(log_weights: Tensor) -> list[float | None]:
    """JSON-safe list (``None`` for non-finite values)."""
    return [value if math.isfinite(value) else None for value in log_weights.double().tolist()]

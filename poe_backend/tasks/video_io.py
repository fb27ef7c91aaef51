"""Reading bundle frames into tensors and writing videos, for the video tasks.

Conventions: frames are float tensors in [0, 1]; a video is ``(F, 3, H, W)``; depth is
``(F, H, W)`` camera-Z with ``+inf`` where nothing was hit (the bundle's convention, see
:mod:`poe_backend.bundle`). The backend, not the add-on, turns the capture into what the
checkpoints were trained on:

* time: the simulation is sampled at the model family's native frame rate
  (``FamilyFacts.native_fps``: Wan 16 fps, FramePack 30 fps) by timestamp, nearest
  captured frame (:func:`poe_backend.bundle.frames_at_rate`, :class:`ClipTiming`), so the
  clip keeps the simulation's seconds whatever the scene's rate; every output video is
  written at the model rate;
* depth: :func:`depth_to_disparity_video`, VACE's per-frame min–max disparity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from poe_backend.bundle import Bundle, BundleError, capped_video_size, frames_at_rate
from poe_backend.models.specs import family_facts
from poe_backend.tasks.images import decode_depth, to_uint8


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
    """The bundle's ``rgb`` pass at ``frames`` (a frame may repeat; each file is read once):
    ``(F, 3, height, width)`` in [0, 1]."""
    images = {frame: read_image(bundle.pass_path("rgb", frame), height, width, field="passes.rgb") for frame in dict.fromkeys(frames)}
    return torch.stack([images[frame] for frame in frames])


def read_depth_frames(bundle: Bundle, frames: list[int], height: int, width: int) -> Tensor:
    """The bundle's ``depth`` pass at ``frames`` (a frame may repeat; each file is read
    once): ``(F, height, width)`` camera-Z, ``+inf`` background (nearest-neighbour resize,
    which keeps background pixels infinite)."""
    maps = {}
    for frame in dict.fromkeys(frames):
        depth = decode_depth(bundle.pass_path("depth", frame), "passes.depth")
        if depth.shape != (bundle.height, bundle.width):
            raise BundleError("passes.depth", f"frame {frame} is {depth.shape[1]}x{depth.shape[0]}, bundle says {bundle.width}x{bundle.height}")
        tensor = torch.from_numpy(depth)[None, None]
        if depth.shape != (height, width):
            tensor = torch.nn.functional.interpolate(tensor, size=(height, width), mode="nearest")
        maps[frame] = tensor[0, 0]
    return torch.stack([maps[frame] for frame in frames])


def depth_to_disparity_video(depth: Tensor) -> Tensor:
    """Camera-Z ``(F, H, W)`` -> the VACE depth control ``(F, 3, H, W)`` in [0, 1], made
    frame by frame as VACE's own depth annotator makes its training controls
    (ali-vilab/VACE ``vace/annotators/depth.py``: the MiDaS / Depth Anything output, a
    relative disparity, min–max normalised per frame): disparity ``1/z`` over the frame's
    hits, ``(d - min) / (max - min)`` over those hits, so in every frame the nearest hit is
    white (1) and the farthest black (0) however far the scene moved; background (``+inf``,
    NaN, ``z <= 0``) is 0, like the sky the annotator sees as zero disparity.

    A frame whose hits all share one depth (a wall facing the camera) has no range to
    spread: its hits are 1 (the nearest thing is white) over the black background, the
    silhouette that remains. A frame with no hit is black. :class:`BundleError` when no
    frame has a hit (nothing to condition on)."""
    valid = torch.isfinite(depth) & (depth > 0)
    if not valid.any():
        raise BundleError("passes.depth", "every depth pixel is background (+inf); nothing to condition on")
    disparity = torch.where(valid, 1.0 / depth.clamp_min(1e-12), torch.zeros_like(depth))
    low = torch.where(valid, disparity, torch.full_like(disparity, math.inf)).amin(dim=(1, 2), keepdim=True)
    high = torch.where(valid, disparity, torch.full_like(disparity, -math.inf)).amax(dim=(1, 2), keepdim=True)
    span = high - low
    spread = torch.where(span > 0, (disparity - low) / span.clamp_min(1e-30), torch.ones_like(disparity))
    control = torch.where(valid, spread, torch.zeros_like(depth))
    return control[:, None].expand(-1, 3, -1, -1).contiguous()


def native_fps(family: str) -> float:
    """The frame rate ``family``'s checkpoints were trained at (``FamilyFacts.native_fps``)."""
    fps = family_facts()[family].native_fps
    if fps is None:
        raise ValueError(f"model family {family!r} declares no native frame rate")
    return fps


@dataclass(frozen=True)
class ClipTiming:
    """When each model frame is and which captured frame it shows: model frame ``k`` is at
    ``k / fps`` s and shows scene frame ``frames[k]``, captured at
    ``(frames[k] - frames[0]) / scene_fps`` s (:func:`poe_backend.bundle.frames_at_rate`:
    nearest timestamp). ``fps`` is the model's rate, ``scene_fps`` the bundle's."""

    fps: float
    scene_fps: float
    frames: list[int]

    @property
    def times(self) -> list[float]:
        """Model frame times in seconds from the first frame."""
        return [index / self.fps for index in range(len(self.frames))]

    @property
    def scene_times(self) -> list[float]:
        """Capture times in seconds from the first frame of the captured frames shown."""
        return [(frame - self.frames[0]) / self.scene_fps for frame in self.frames]

    @property
    def max_error(self) -> float:
        """The largest ``|capture time - model time|`` in seconds (0 when ``scene_fps`` is a
        multiple of ``fps``; at most half a captured frame)."""
        return max(abs(scene - model) for scene, model in zip(self.scene_times, self.times))

    def describe(self) -> dict[str, Any]:
        """JSON-ready record for ``result.json``."""
        return {
            "fps": self.fps, "scene_fps": self.scene_fps, "scene_frames": self.frames,
            "times_s": self.times, "scene_times_s": self.scene_times, "max_error_s": self.max_error,
        }


def model_frames(bundle: Bundle, fps: float) -> list[int]:
    """The captured frame for every model frame the bundle's simulation lasts at ``fps``."""
    return frames_at_rate(bundle.frames, bundle.fps, fps)


def clip_timing(bundle: Bundle, fps: float, num_frames: int | None, *, multiple: int = 4, strict: bool = True) -> ClipTiming:
    """The first ``num_frames`` model frames at ``fps`` (all the simulation lasts by
    default), cut to the longest ``multiple·k + 1`` prefix (video VAEs need it);
    :class:`BundleError` when too few, or when ``strict`` and ``num_frames`` exceeds what
    the simulation lasts (else it is a cap). A 2 s simulation (frames 1..49 at 24 fps) is
    33 frames at 16 fps."""
    frames = model_frames(bundle, fps)
    seconds = (frames[-1] - frames[0]) / bundle.fps
    if strict and num_frames is not None and num_frames > len(frames):
        raise BundleError("frames", f"num_frames={num_frames} but the bundle's {seconds:g} s ({len(bundle.frames)} frames at {bundle.fps:g} fps) "
                                    f"are {len(frames)} frames at the model's {fps:g} fps")
    available = len(frames) if num_frames is None else min(num_frames, len(frames))
    usable = (available - 1) // multiple * multiple + 1
    if usable < multiple + 1:
        raise BundleError("frames", f"needs at least {multiple + 1} frames ({multiple}k+1) at the model's {fps:g} fps, {multiple / fps:g} s; "
                                    f"the bundle's {len(bundle.frames)} frames at {bundle.fps:g} fps last {seconds:g} s")
    return ClipTiming(fps, bundle.fps, frames[:usable])


@dataclass(frozen=True)
class CappedSize:
    """What a video task generates: ``height``×``width`` pixels (multiples of 16) and at
    most ``max_frames`` model frames (the frame count actually used is decided by the task's
    frame rule from this cap). ``capped_from`` is ``{"width", "height", "num_frames"}`` of
    the bundle (``num_frames``: the model frames its simulation lasts) when the cap changed
    any of them, else None; ``result.json`` records it."""

    height: int
    width: int
    max_frames: int
    capped_from: dict[str, int] | None


def capped_size(bundle: Bundle, height: int | None, width: int | None, num_frames: int | None, *, available: int, max_side: int, max_frames: int,
                multiple: int = 16) -> CappedSize:
    """The generation size of a video task (:func:`poe_backend.bundle.capped_video_size`,
    the rule the add-on shows) for a simulation that lasts ``available`` model frames. Unset
    sizes take the bundle's, scaled down (aspect kept) so the longer side is at most
    ``max_side`` and rounded down to ``multiple``; the frame cap is ``min(num_frames or
    available, max_frames)``. Explicit values above a cap raise :class:`BundleError` naming
    the field (``params.width``/``height``/``num_frames``)."""
    for name, value, limit in (("width", width, max_side), ("height", height, max_side), ("num_frames", num_frames, max_frames)):
        if value is not None and value > limit:
            raise BundleError(f"params.{name}", f"{name}={value} is above the cap max_{'side' if name != 'num_frames' else 'frames'}={limit}; raise the cap to generate it")
    capped_width, capped_height, _ = capped_video_size(bundle.width, bundle.height, available, max_side=max_side, max_frames=max_frames, multiple=multiple)
    height = capped_height if height is None else height // multiple * multiple
    width = capped_width if width is None else width // multiple * multiple
    if height < multiple or width < multiple:
        raise BundleError("params.width", f"generation size must be at least {multiple}x{multiple}, got {width}x{height}")
    size_capped = (width, height) == (capped_width, capped_height) != (bundle.width, bundle.height)
    frames_capped = num_frames is None and available > max_frames
    capped_from = {"width": bundle.width, "height": bundle.height, "num_frames": available} if size_capped or frames_capped else None
    return CappedSize(height, width, min(available, max_frames) if num_frames is None else num_frames, capped_from)


def write_png(path: Path, image: Tensor) -> Path:
    """An RGB image ``(3, H, W)`` in [0, 1] as an 8-bit PNG."""
    Image.fromarray(to_uint8(image[None])[0]).save(path)
    return path


def write_mp4(path: Path, video: Tensor, fps: float) -> Path:
    """H.264 MP4 through imageio-ffmpeg (yuv420p, so sizes are even: libx264 needs it)."""
    import imageio.v2 as imageio

    frames = to_uint8(video)
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

"""What the image tasks (insertion, regional_t2i) share: reading passes, resolution, the
sampler choice, seeds, and writing particles, the chosen image and the manifest.

Reading: RGB/plate PNGs with PIL (``(H, W, 3)`` uint8), masks as ``(H, W)`` float in [0, 1]
(white = object), depth EXR channel ``Z`` (float32 camera Z, ``+inf`` background) with the
``OpenEXR`` package. Every pass is resized to the run's resolution (bilinear for colour,
nearest for masks and depth), which is the bundle's size rounded down to a multiple of 16 and
capped by ``max_side`` (aspect kept).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field

from poe_backend.bundle import Bundle, BundleError, capped_size
from poe_backend.sampling import SampleResult
from poe_backend.sampling.samplers import Transport
from poe_backend.sampling.schedules import flux_shift_mu, log_snr_levels, shifted_levels
from poe_backend.tasks import base
from poe_backend.tasks.base import SamplerName, TaskContext, TaskParams

OffloadName = Literal["auto", "none", "group", "sequential"]


class ImageParams(TaskParams):
    """Parameters every image task shares (``preset`` and :meth:`effective` come from
    :class:`TaskParams`)."""

    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="None: the bundle's seed")
    max_side: int = Field(1024, ge=16, le=4096, description="longest side in pixels (rounded down to a multiple of 16)")
    sampler: SamplerName = "fkc"
    levels: int = Field(28, ge=2, le=500)
    langevin_steps: int = Field(2, ge=0, le=50)
    step_scale: float = Field(0.5, gt=0.0, le=2.0)
    metropolis: bool = base.metropolis_field()
    transport: Transport = base.transport_field()
    ess_threshold: float = Field(0.5, ge=0.0, le=1.0, description="resample when ESS/P falls below it (0: never; at P = 2, 0.5 never fires since ESS >= 1)")
    fk_scale: float = Field(1.0, ge=0.0, le=1.0, description="fkc: multiplies the experts' Feynman-Kac transport weight (1: exact; 0: the rewards' twist alone, the paper's resampling)")
    schedule: Literal["flux_shift", "log_snr"] = "flux_shift"
    t_max: float = Field(0.98, gt=0.0, lt=1.0, description="first level; below 1 (sigma must stay finite)")
    particles: int = Field(2, ge=1, le=256)
    max_batch: int | None = Field(None, ge=1, le=256, description="particles per transformer forward; None: the planner sizes the micro-batch from the free memory")
    offload: OffloadName = "auto"
    fp8_storage: bool = False
    max_sequence_length: int = Field(512, ge=8, le=512)
    save_particles: bool = True

    PREVIEW: ClassVar[dict[str, Any]] = {"max_side": 512, "levels": 8, "langevin_steps": 1, "particles": 1}



def resolution(bundle: Bundle, max_side: int) -> tuple[int, int]:
    """``(height, width)``: the bundle's size scaled so the longest side is at most
    ``max_side``, each rounded down to a multiple of 16 (at least 16)."""
    width, height = capped_size(bundle.width, bundle.height, max_side=max_side)
    return height, width


def read_rgb(path: Path, size: tuple[int, int], field: str) -> np.ndarray:
    """8-bit sRGB PNG -> ``(H, W, 3)`` uint8 at ``size = (H, W)``."""
    image = _open(path, field).convert("RGB")
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def read_mask(path: Path, size: tuple[int, int], field: str) -> np.ndarray:
    """0/255 PNG -> ``(H, W)`` float32 in {0, 1} (white = object)."""
    image = _open(path, field).convert("L")
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.NEAREST)
    mask = (np.asarray(image, dtype=np.float32) >= 128).astype(np.float32)
    if not mask.any():
        raise BundleError(field, f"mask {path.name} is empty (no white pixels)")
    return mask


def decode_depth(path: Path, field: str) -> np.ndarray:
    """OpenEXR channel ``Z`` -> ``(H, W)`` float32 camera Z (``+inf`` background), at the
    file's size. The values are checked here, where the job decodes them (the server reads
    only the header at submit): :class:`BundleError` naming ``field`` for a file that is not
    a float image or whose values :func:`check_depth_values` refuses."""
    import OpenEXR

    try:
        with OpenEXR.File(str(path), separate_channels=True) as exr:
            channels = exr.channels()
            if "Z" not in channels:
                raise BundleError(field, f"{path.name} has no channel 'Z' (has {', '.join(channels)})")
            depth = np.asarray(channels["Z"].pixels)
    except BundleError:
        raise
    except Exception as error:  # OpenEXR raises plain exceptions for unreadable files
        raise BundleError(field, f"cannot read {path.name} as OpenEXR ({error})") from None
    check_depth_values(depth, field, path.name)
    return depth.astype(np.float32, copy=False)


def read_depth(path: Path, size: tuple[int, int], field: str) -> np.ndarray:
    """:func:`decode_depth`, nearest-resized to ``size`` ``(H, W)`` (background stays
    ``+inf``)."""
    depth = decode_depth(path, field)
    if depth.shape != size:
        rows = np.minimum((np.arange(size[0]) + 0.5) * depth.shape[0] / size[0], depth.shape[0] - 1).astype(int)
        columns = np.minimum((np.arange(size[1]) + 0.5) * depth.shape[1] / size[1], depth.shape[1] - 1).astype(int)
        depth = depth[rows][:, columns]
    return depth


def check_depth_values(depth: np.ndarray, field: str, name: str) -> None:
    """Camera Z ``(H, W)`` of file ``name`` must be a 2-D float image with no NaN, nothing
    negative (``-inf`` included) and not all ``+inf``; :class:`BundleError` naming ``field``
    (the failed job's error: code ``invalid_bundle``) with the count and first pixel."""
    if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
        raise BundleError(field, f"{name}: channel 'Z' must be a 2-D float image, got {depth.dtype} of shape {depth.shape}")
    for what, bad in (("NaN", np.isnan(depth)), ("negative", depth < 0)):
        if bad.any():
            row, column = np.argwhere(bad)[0]
            raise BundleError(field, f"{name}: depth has {what} values ({int(bad.sum())} pixels, first at x={column}, y={row}); camera Z must be >= 0, +inf for background")
    if not np.isfinite(depth).any():
        raise BundleError(field, f"{name}: every depth pixel is background (+inf): nothing in view")


def _open(path: Path, field: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
        return image
    except FileNotFoundError:
        raise BundleError(field, f"missing file {path}") from None
    except Exception as error:
        raise BundleError(field, f"cannot read {path.name} as an image ({error})") from None


def levels_for(params: ImageParams, num_tokens: int) -> list[float]:
    """Annealing levels from ``t_max`` to 0: FLUX's shifted grid for this token count, or
    evenly spaced in log-SNR."""
    if params.schedule == "log_snr":
        return log_snr_levels(params.levels, t_max=params.t_max)
    return shifted_levels(params.levels, flux_shift_mu(num_tokens), t_max=params.t_max)


def start_noise(seed: int, num_particles: int, event_shape: tuple[int, ...]) -> tuple[torch.Generator, torch.Tensor]:
    """A CPU generator seeded with ``seed`` and standard normal noise ``(P, *event_shape)``
    drawn from it first (CPU, so a seed gives the same run on any device)."""
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn((num_particles, *event_shape), generator=generator)
    return generator, noise


def run_sampler(params: ImageParams, product: Any, noise: torch.Tensor, levels: list[float], generator: torch.Generator, context: TaskContext) -> SampleResult:
    """Run the chosen sampler with the image parameters' options."""
    return base.run_sampler(params.sampler, product, noise, levels, generator, context, langevin_steps=params.langevin_steps, step_scale=params.step_scale, metropolis=params.metropolis,
                            ess_threshold=params.ess_threshold, transport=params.transport, fk_scale=params.fk_scale)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(P, 3, H, W)`` in [0, 1] -> ``(P, H, W, 3)`` uint8 (images, or a video's frames)."""
    return as_uint8(images.permute(0, 2, 3, 1).cpu().numpy())


def write_outputs(out_dir: Path, image: np.ndarray, particles: np.ndarray | None, log_weights: torch.Tensor | None, extra: dict[str, np.ndarray] | None = None) -> dict[str, Path]:
    """Write ``image.png`` and, when given, ``particles.npz`` (``images (P, H, W, 3)`` uint8,
    ``log_weights (P,)``) plus one PNG per particle under ``particles/``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {"image": out_dir / "image.png"}
    Image.fromarray(image).save(outputs["image"])
    if particles is not None:
        arrays = {"images": particles, **(extra or {})}
        if log_weights is not None:
            arrays["log_weights"] = log_weights.detach().cpu().double().numpy()
        outputs["particles"] = out_dir / "particles.npz"
        np.savez_compressed(outputs["particles"], **arrays)
        (out_dir / "particles").mkdir(exist_ok=True)
        for index, particle in enumerate(particles):
            path = out_dir / "particles" / f"{index:03d}.png"
            Image.fromarray(particle).save(path)
            outputs[f"particle_{index:03d}"] = path
    return outputs


def write_expert_inputs(out_dir: Path, seen: dict[str, dict[str, np.ndarray]]) -> tuple[dict[str, Path], dict[str, dict[str, str]]]:
    """Write what each expert was given as PNGs (``seen``: expert name -> input name ->
    ``(H, W, 3)`` or ``(H, W)`` uint8 at the run's resolution) to ``inputs/<expert>_<input>.png``;
    returns the output names -> paths (for ``outputs``) and ``expert_inputs`` (expert ->
    input -> output name) for ``result.json``, so a result can be checked against its inputs."""
    (out_dir / "inputs").mkdir(parents=True, exist_ok=True)
    outputs, listing = {}, {}
    for expert, inputs in seen.items():
        for name, image in inputs.items():
            key = f"{expert}_{name}"
            outputs[key] = out_dir / "inputs" / f"{key}.png"
            Image.fromarray(image).save(outputs[key])
            listing.setdefault(expert, {})[name] = key
    return outputs, listing


def as_uint8(values: np.ndarray) -> np.ndarray:
    """An array in [0, 1] -> uint8 (rounded)."""
    return (np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def manifest(task: str, context: TaskContext, params: ImageParams, seed: int, **extra: Any) -> dict[str, Any]:
    """The reproducibility record: task, bundle, effective params, seed, model preset and the
    exact model specs used, device, torch/diffusers versions, plus ``extra``."""
    import diffusers
    import transformers

    return json.loads(
        json.dumps(
            {
                "task": task,
                "bundle": str(context.bundle.root),
                "params": params.model_copy(update={"seed": seed}).model_dump(),
                "requested_params": context.params.model_dump(exclude_unset=True),
                "seed": seed,
                "models": context.models,
                "device": context.device,
                "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__},
                **extra,
            },
            default=_json_default,
        )
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return str(value)


class Timer:
    """Wall-clock seconds of named phases (reported in the manifest)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._start, 4)
        self._start = now

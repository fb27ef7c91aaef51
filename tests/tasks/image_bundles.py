"""Tiny bundles for the image tasks, written like the add-on writes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import OpenEXR
from PIL import Image

from poe_backend.bundle import SCHEMA, Bundle, parse_bundle, read_bundle, write_bundle

WIDTH, HEIGHT = 48, 32


def write_exr(path: Path, depth: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, {"Z": depth.astype(np.float32)}) as exr:
        exr.write(str(path))


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def insertion_bundle(root: Path, *, params: dict | None = None, prompt: str = "a red ball on a table") -> Bundle:
    """Plate (gradient), depth with a near box (the object) in front of a far wall and a
    background strip (+inf), the object's mask, and an RGB render."""
    rng = np.random.default_rng(0)
    plate = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    plate[..., 0] = np.linspace(0, 255, WIDTH, dtype=np.uint8)[None]
    plate[..., 1] = np.linspace(0, 255, HEIGHT, dtype=np.uint8)[:, None]
    plate[..., 2] = rng.integers(0, 255, (HEIGHT, WIDTH), dtype=np.uint8)
    depth = np.full((HEIGHT, WIDTH), 5.0, dtype=np.float32)
    depth[:4] = np.inf
    depth[8:24, 16:32] = 2.0
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[8:24, 16:32] = 255
    render = plate.copy()
    render[mask > 0] = (200, 30, 30)
    write_png(root / "plate.png", plate)
    write_exr(root / "depth" / "0001.exr", depth)
    write_png(root / "mask" / "ball" / "0001.png", mask)
    write_png(root / "rgb" / "0001.png", render)
    data = {
        "schema": SCHEMA,
        "task": "insertion",
        "prompt": prompt,
        "seed": 7,
        "width": WIDTH,
        "height": HEIGHT,
        "fps": 24,
        "frames": [1],
        "passes": {"plate": "plate.png", "depth": "depth/####.exr", "mask.ball": "mask/ball/####.png", "rgb": "rgb/####.png"},
        "objects": [{"name": "ball", "pass_index": 1, "prompt": "a red ball", "bbox_px": [[16, 8, 32, 24]]}],
        "params": params or {},
    }
    write_bundle(parse_bundle(data, root, check_files=True))
    return read_bundle(root)


def regional_bundle(root: Path, *, params: dict | None = None, prompt: str = "a park") -> Bundle:
    """Two boxed objects with prompts and one prompted object out of view."""
    root.mkdir(parents=True, exist_ok=True)
    data = {
        "schema": SCHEMA,
        "task": "regional_t2i",
        "prompt": prompt,
        "seed": 3,
        "width": WIDTH,
        "height": HEIGHT,
        "fps": 24,
        "frames": [1],
        "passes": {},
        "objects": [
            {"name": "dog", "pass_index": 1, "prompt": "a dog", "bbox_px": [[0, 0, 20, 30]]},
            {"name": "cat", "pass_index": 2, "prompt": "a cat", "bbox_px": [[24, 8, 47, 32]]},
            {"name": "bird", "pass_index": 3, "prompt": "a bird", "bbox_px": [None]},
        ],
        "params": params or {},
    }
    write_bundle(parse_bundle(data, root, check_files=True))
    return read_bundle(root)

"""Shared fixtures and builders for the video tests: a data directory holding the tiny
presets (built once per session), tiny bundles written with PIL + OpenEXR, and a spy that
counts expert calls. Import the fixtures into a test module to use them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from poe_backend.sampling.experts import GenerativeExpert


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``POE_DATA_DIR`` for the session, so tiny presets build once into a temp dir. Also
    one intra-op thread while it lives: tiny models on a shared 2-core machine are ~100x
    slower with two threads spinning against other processes."""
    directory = tmp_path_factory.mktemp("poe-data")
    previous, threads = os.environ.get("POE_DATA_DIR"), torch.get_num_threads()
    os.environ["POE_DATA_DIR"] = str(directory)
    torch.set_num_threads(1)
    yield directory
    torch.set_num_threads(threads)
    if previous is None:
        os.environ.pop("POE_DATA_DIR", None)
    else:
        os.environ["POE_DATA_DIR"] = previous


class SpyExpert(GenerativeExpert):
    """Wraps an expert and records the time of every velocity call."""

    def __init__(self, inner: GenerativeExpert) -> None:
        self.inner = inner
        self.calls: list[float] = []
        self.reindexed: list[torch.Tensor] = []

    def velocity(self, x: torch.Tensor, t: float) -> torch.Tensor:
        self.calls.append(t)
        return self.inner.velocity(x, t)

    def reindex(self, indices: torch.Tensor) -> None:
        self.reindexed.append(indices)
        self.inner.reindex(indices)


def write_exr_depth(path: Path, depth: np.ndarray) -> None:
    import OpenEXR

    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, {"Z": depth.astype(np.float32)}) as exr:
        exr.write(str(path))


def write_video_bundle(root: Path, task: str, *, num_frames: int = 5, height: int = 32, width: int = 32, with_depth: bool = True, seed: int = 3) -> Path:
    """A tiny synthetic clip: a bright square moving right over a gradient, its camera-Z
    depth (square at 2, floor 4..8, sky +inf in the top rows)."""
    root.mkdir(parents=True, exist_ok=True)
    frames = list(range(1, num_frames + 1))
    ys, xs = np.mgrid[0:height, 0:width]
    for index, frame in enumerate(frames):
        rgb = np.stack([xs / width, ys / height, np.full_like(xs, 0.3, dtype=float)], -1)
        x0 = 4 + 2 * index
        square = (ys >= 12) & (ys < 20) & (xs >= x0) & (xs < x0 + 8)
        rgb[square] = [1.0, 0.9, 0.2]
        (root / "rgb").mkdir(exist_ok=True)
        Image.fromarray((rgb * 255).astype(np.uint8)).save(root / "rgb" / f"{frame:04d}.png")
        if with_depth:
            depth = 4.0 + 4.0 * (height - ys) / height
            depth[:4] = np.inf
            depth[square] = 2.0
            write_exr_depth(root / "depth" / f"{frame:04d}.exr", depth)
    passes = {"rgb": "rgb/####.png"}
    if with_depth:
        passes["depth"] = "depth/####.exr"
    data = {
        "schema": "poe-bundle/1", "task": task, "prompt": "a yellow box slides to the right", "seed": seed,
        "width": width, "height": height, "fps": 8, "frames": frames, "passes": passes, "objects": [], "params": {},
    }
    (root / "bundle.json").write_text(json.dumps(data), encoding="utf-8")
    return root

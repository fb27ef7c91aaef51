"""Capture speed: seconds per frame for each pass, and full capture vs a plain Cycles render.

    python benchmarks/capture_speed.py [--frames 3] [--samples 16] [--repeats 2]

Scene: blend_examples/falling_objects.py (5 rigid bodies, unbaked cache), CPU Cycles,
denoising off, at 512x512 and 832x480. Every run starts from the saved file, so each one
simulates the physics from scratch. Plain and capture runs alternate ``--repeats`` times and
the fastest of each is kept, since shared machines make single timings noisy. Columns (seconds per frame unless noted):

* rgb: the sim2video render (RGB, Z and object index in one Cycles render) + 8-bit PNG
* depth+masks: multilayer EXR save + decode + depth EXR + one mask PNG per object
* data 1spp: insertion's data-only render (1 sample: depth and masks without RGB)
* plate: insertion's plate render (one frame, preset samples)
* capture: the whole sim2video ``capture_bundle`` call (physics, boxes, passes, bundle)
* plain: ``bpy.ops.render.render(write_still=True)`` of the same frames to PNG
* ratio: capture / plain (goal < 1.3)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import bpy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from addon.capture import capture_bundle  # noqa: E402
from blend_examples import falling_objects  # noqa: E402

RESOLUTIONS = ((512, 512), (832, 480))


def open_scene(blend: Path, width: int, height: int, samples: int):
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = width, height, 100
    scene.cycles.samples, scene.cycles.use_denoising = samples, False
    return scene


def plain_render(scene, frames: list[int], out_dir: Path) -> float:
    started = time.perf_counter()
    for frame in frames:
        scene.frame_set(frame)
        scene.render.filepath = str(out_dir / f"plain_{frame:04d}.png")
        bpy.ops.render.render(write_still=True)
    return time.perf_counter() - started


def timed_capture(scene, out_dir: Path, task: str, frames: list[int], samples: int, objects=None) -> tuple[float, dict]:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    capture_bundle(scene, out_dir, task=task, frames=frames, objects=objects, samples=samples, timings=timings)
    return time.perf_counter() - started, timings


def main() -> None:
    parser = argparse.ArgumentParser(description="Capture speed benchmark")
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    arguments = parser.parse_args()
    frames = list(range(1, arguments.frames + 1))
    rows = []
    with tempfile.TemporaryDirectory(prefix="poe_bench_") as scratch:
        scratch = Path(scratch)
        blend = falling_objects.build(scratch / "falling.blend")
        for width, height in RESOLUTIONS:
            open_scene(blend, 64, 64, 1)
            bpy.ops.render.render()  # warm up Cycles (kernels, textures) once per resolution
            plain, full, timings = float("inf"), float("inf"), {}
            for repeat in range(arguments.repeats):
                scene = open_scene(blend, width, height, arguments.samples)
                plain = min(plain, plain_render(scene, frames, scratch))
                scene = open_scene(blend, width, height, arguments.samples)
                seconds, run_timings = timed_capture(scene, scratch / f"video_{width}_{repeat}", "sim2video", frames, arguments.samples)
                if seconds < full:
                    full, timings = seconds, run_timings
            scene = open_scene(blend, width, height, arguments.samples)
            _, insertion = timed_capture(scene, scratch / f"insert_{width}", "insertion", frames[:1], arguments.samples, ["BallRed"])
            count = len(frames)
            rows.append((f"{width}x{height}", (timings["render"] + timings["rgb"]) / count, timings["depth_masks"] / count,
                         insertion["render"], insertion["plate"], full / count, plain / count, full / plain))
    header = ("resolution", "rgb", "depth+masks", "data 1spp", "plate", "capture", "plain", "ratio")
    print(f"Blender {bpy.app.version_string}, Cycles CPU, {arguments.samples} samples, {len(frames)} frames, "
          f"best of {arguments.repeats}, seconds per frame (plate and data 1spp: seconds for one frame)")
    print(" | ".join(f"{name:>11}" for name in header))
    for row in rows:
        print(" | ".join([f"{row[0]:>11}"] + [f"{value:11.3f}" for value in row[1:]]))


if __name__ == "__main__":
    main()

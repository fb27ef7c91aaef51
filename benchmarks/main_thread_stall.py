"""Longest main-thread stall of one add-on timer tick while a ~130 MB video result arrives,
against a real backend on 127.0.0.1 (goal: under 20 ms).

The backend serves one finished sim2video job, written as a job folder it reads back at
start (``jobs/<id>/state.json`` + ``outputs/``): a short real MP4 (64x48, 48 frames)
padded to ``--size-mb`` with an MP4 ``free`` box of random bytes, which every MP4 reader
skips, so Blender opens it as a movie while the full size goes over the wire.

Rows (each loads the result as a movie strip into a bpy scene, as the add-on does):

* **before**: what the old synchronous tick did in one timer call: ``GET`` the status,
  download every output over HTTP, read result.json, load the strip;
* **after, local**: the new tick (``JobTracker.tick``) called every 10 ms until the strip
  is in, the backend on this machine: the outputs are hard-linked from its job folder;
* **after, HTTP**: the same with the job folder treated as out of reach (as for a backend
  on another machine behind an SSH tunnel): the worker downloads the 130 MB.

A tick's time is the main thread's stall. The table gives the longest tick, how much of
it was Blender creating the strip (``strips.new_movie``, main-thread bpy work whatever the
size), the longest tick that loaded nothing, and the wall time until the strip was in.

    PYTHONPATH=. python benchmarks/main_thread_stall.py [--size-mb 130] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import bpy
import imageio.v2 as imageio
import numpy as np

from addon import results
from addon.client import Client
from addon.jobs import JobResult, JobTracker
from poe_backend.server.jobs import STATE_FILE, Job, write_json_atomically
from tests.server.conftest import start_backend

TICK_INTERVAL_S = 0.01
FRAMES = 48


class OutOfReach(Client):
    """The HTTP path: the job folder is treated as on another machine."""

    def local_output_dir(self, job: dict[str, Any]) -> Path | None:
        return None


def write_padded_mp4(path: Path, size_bytes: int) -> None:
    """A real 64x48 MP4 of :data:`FRAMES` frames followed by a ``free`` box making it
    ``size_bytes`` long."""
    with imageio.get_writer(path, fps=24, macro_block_size=16) as writer:
        for index in range(FRAMES):
            writer.append_data(np.full((48, 64, 3), (index * 5) % 256, np.uint8))
    padding = size_bytes - path.stat().st_size - 8
    with open(path, "ab") as handle:
        handle.write(struct.pack(">I", padding + 8) + b"free")
        for _ in range(padding >> 20):
            handle.write(os.urandom(1 << 20))
        handle.write(os.urandom(padding & ((1 << 20) - 1)))


def write_finished_job(data_dir: Path, job_id: str, size_bytes: int) -> None:
    """A done sim2video job folder the backend lists after it starts."""
    outputs = data_dir / "jobs" / job_id / "outputs"
    outputs.mkdir(parents=True)
    write_padded_mp4(outputs / "video.mp4", size_bytes)
    frames = list(range(1, FRAMES + 1))
    write_json_atomically(outputs / "result.json", {"task": "sim2video", "kind": "video", "primary": "video", "frames": frames})
    job = Job(id=job_id, task="sim2video", bundle_dir=str(data_dir / "bundle"), params={"seed": 1}, models="tiny",
              bundle={"prompt": "stall benchmark", "seed": 1, "frames": frames, "fps": 24},
              state="done", finished=time.time(), outputs={"video": "video.mp4", "result.json": "result.json"}, kind="video", primary="video")
    write_json_atomically(outputs.parent / STATE_FILE, job.to_json())


class TimedLoader:
    """Loads a result as a movie strip (the add-on's loader) and keeps the seconds each load took."""

    def __init__(self, scene: Any) -> None:
        self.scene, self.seconds = scene, []

    def __call__(self, result: JobResult) -> None:
        start = time.perf_counter()
        results.load_result(self.scene, result)
        self.seconds.append(time.perf_counter() - start)


def old_synchronous_tick(client: Client, job_id: str, results_dir: Path, loader: TimedLoader) -> tuple[list[float], list[float], float]:
    """The one timer call the old tick spent on a job that had just finished: its seconds,
    the loader's share, and the wall seconds until loaded (the same)."""
    start = time.perf_counter()
    record = client.job(job_id)
    outputs = client.download_outputs(record, results_dir / job_id)
    manifest = json.loads(outputs["result.json"].read_text(encoding="utf-8"))
    loader(JobResult(job_id, record["kind"], outputs[record["primary"]], outputs, manifest, record))
    seconds = time.perf_counter() - start
    return [seconds], [loader.seconds[-1]], seconds


def worker_ticks(client: Client, job_id: str, results_dir: Path, loader: TimedLoader) -> tuple[list[float], list[float], float]:
    """Every tick's seconds, the loader's seconds within each, and the wall seconds until
    the strip was loaded."""
    tracker = JobTracker(client, results_dir, loader)
    tracked = tracker.track({"id": job_id})
    ticks, loads, start = [], [], time.perf_counter()
    while not tracked.loaded:
        loads_before, tick_start = len(loader.seconds), time.perf_counter()
        tracker.tick()
        ticks.append(time.perf_counter() - tick_start)
        loads.append(sum(loader.seconds[loads_before:]))
        assert not tracked.gave_up, tracked.message
        time.sleep(TICK_INTERVAL_S)
    return ticks, loads, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=130.0)
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    size = int(arguments.size_mb * 1e6)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    loader = TimedLoader(bpy.context.scene)
    paths = {"before (sync tick, HTTP)": old_synchronous_tick, "after, local (link)": worker_ticks, "after, HTTP (worker)": worker_ticks}
    runs: dict[str, list[tuple[list[float], list[float], float]]] = {name: [] for name in paths}
    with tempfile.TemporaryDirectory() as temporary:
        data_dir = Path(temporary) / "data"
        data_dir.mkdir()
        job_id = "20250101-000000-57a110"
        write_finished_job(data_dir, job_id, size)
        backend = start_backend(data_dir)
        try:
            local, remote = Client(backend.url, backend.token), OutOfReach(backend.url, backend.token)
            for repeat in range(arguments.repeats):
                for index, (name, measure) in enumerate(paths.items()):
                    client = remote if name.startswith("after, HTTP") else local
                    runs[name].append(measure(client, job_id, Path(temporary) / f"results-{repeat}-{index}", loader))
        finally:
            backend.stop()
    print(f"one finished video job of {size / 1e6:.0f} MB on 127.0.0.1, {arguments.repeats} repeats, ticks every {TICK_INTERVAL_S * 1000:.0f} ms, "
          f"loaded as a movie strip; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'path':<26}{'ticks':>7}{'longest tick ms':>17}{'its strip load ms':>19}{'longest other tick ms':>23}{'to loaded s':>13}")
    for name, measured in runs.items():
        pairs = [pair for ticks, loads, _ in measured for pair in zip(ticks, loads)]
        longest, its_load = max(pairs)
        others = [tick for tick, load in pairs if load == 0.0]
        other = f"{max(others) * 1000:.1f}" if others else "-"
        to_loaded = statistics.median(wall for _, _, wall in measured)
        print(f"{name:<26}{len(pairs) // len(measured):>7}{longest * 1000:>17.1f}{its_load * 1000:>19.1f}{other:>23}{to_loaded:>13.2f}")


if __name__ == "__main__":
    main()

"""IPC benchmark: status-call latency and bundle-upload throughput against a local copy.

Starts the real backend on a free loopback port (CPU), then

1. times ``GET /v1/jobs/{id}`` through the add-on's client (urllib, a new connection per
   call, as the add-on's timer does): median and p95 round trip;
2. generates a synthetic sim2video-sized bundle (49 frames of 832x480: RGB PNG, float32
   depth EXR, mask PNG; noise, so PNG compression cannot cheat) and uploads it with the
   add-on's streamed tar (the remote-backend path) until the job is accepted, and
   compares with ``shutil.copytree`` of the same files on the same storage (by default
   /dev/shm, so both sides measure CPU and IPC, not the disk's writeback). It is
   uploaded twice per repeat: as a *transfer* (the same files, but a bundle.json that
   lists no passes, so the server receives, extracts and reads bundle.json only) and
   *validated* (every pass checked at submit: PNG headers, and every depth EXR decoded
   and its values checked). Goal: transfer throughput > 0.5 x copy throughput; the
   difference between the two rows is the cost of submit-time validation.

Run: ``python benchmarks/ipc.py [--frames 49] [--calls 200] [--repeats 5] [--tmp DIR]`` from the
repository root. Prints a table (and writes the numbers with ``--json FILE``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import OpenEXR
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from addon.client import BackendNotRunning, Client  # noqa: E402

WIDTH, HEIGHT = 832, 480
#: The bundle is submitted as a toy2d job (accepted, so the timing covers upload,
#: extraction and validation, with nothing thrown away); the job is tiny and cancelled.
TINY_JOB = {"particles": 8, "levels": 2, "langevin_steps": 0}
FINISHED = frozenset({"done", "failed", "cancelled"})


def make_bundle(root: Path, frames: int) -> int:
    """A sim2video-sized bundle of ``frames`` noisy frames (task toy2d, which accepts and
    validates any passes); returns its size in bytes."""
    rng = np.random.default_rng(0)
    for sub in ("rgb", "depth", "mask/ball"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    numbers = list(range(1, frames + 1))
    for frame in numbers:
        Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(root / f"rgb/{frame:04d}.png", compress_level=1)
        depth = (2.0 + rng.random((HEIGHT, WIDTH))).astype(np.float32)
        OpenEXR.File({"type": OpenEXR.scanlineimage}, {"Z": depth}).write(str(root / f"depth/{frame:04d}.exr"))
        mask = np.zeros((HEIGHT, WIDTH), np.uint8)
        mask[100 + frame : 200 + frame, 300:420] = 255
        Image.fromarray(mask).save(root / f"mask/ball/{frame:04d}.png")
    bundle = {
        "schema": "poe-bundle/1", "task": "toy2d", "prompt": "a ball falls", "seed": 0, "width": WIDTH, "height": HEIGHT,
        "fps": 16, "frames": numbers, "passes": {"rgb": "rgb/####.png", "depth": "depth/####.exr", "mask.ball": "mask/ball/####.png"},
        "objects": [{"name": "ball", "pass_index": 1}],
    }
    (root / "bundle.json").write_text(json.dumps(bundle))
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


def make_transfer_twin(bundle: Path, twin: Path) -> None:
    """``twin``: the files of ``bundle`` (hard links) with a bundle.json that lists no
    passes or objects, so submitting it costs the transfer and extraction only."""
    shutil.copytree(bundle, twin, copy_function=os.link, ignore=shutil.ignore_patterns("bundle.json"))
    data = json.loads((bundle / "bundle.json").read_text())
    (twin / "bundle.json").write_text(json.dumps({**data, "passes": {}, "objects": []}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_backend(data_dir: Path) -> tuple[subprocess.Popen, Client]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "poe_backend", "serve", "--port", str(port), "--data-dir", str(data_dir)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = Client(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 60
    while True:
        try:
            client.health()
            break
        except BackendNotRunning:
            if time.monotonic() > deadline or process.poll() is not None:
                raise
            time.sleep(0.2)
    client.token = (data_dir / "token").read_text().strip()
    return process, client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    parser.add_argument(
        "--tmp", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
        help="where the bundle, the copies and the backend's data live (default /dev/shm: memory, so disk writeback noise does not decide the ratio)",
    )
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=arguments.tmp, prefix="poe-ipc-") as temporary:
        root = Path(temporary)
        size = make_bundle(root / "bundle", arguments.frames)
        make_transfer_twin(root / "bundle", root / "transfer")
        process, client = start_backend(root / "data")
        try:
            report = run(client, root, size, arguments, process.pid)
        finally:
            os.kill(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
    print_table(report)
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(report, indent=2))


def upload_and_cancel(client: Client, bundle: Path) -> str:
    """Upload, then cancel the job at once (a warm-up and the job the status calls poll)."""
    job_id = client.upload(bundle, params=TINY_JOB)["id"]
    client.cancel(job_id)
    return job_id


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_upload(client: Client, bundle: Path, server_pid: int) -> tuple[float, float]:
    """Wall seconds and CPU seconds (client + server) of one upload; its job is cancelled
    at once and waited for (its sampling and plots would compete with the next
    measurement)."""
    start, start_cpu, start_server = time.perf_counter(), time.process_time(), cpu_seconds(server_pid)
    uploaded = client.upload(bundle, params=TINY_JOB)
    wall = time.perf_counter() - start
    cpu = time.process_time() - start_cpu + cpu_seconds(server_pid) - start_server
    client.cancel(uploaded["id"])
    deadline = time.monotonic() + 60
    while client.job(uploaded["id"])["state"] not in FINISHED and time.monotonic() < deadline:
        time.sleep(0.05)
    return wall, cpu


def timed_copy(root: Path, repeat: int) -> tuple[float, float]:
    """Wall and CPU seconds of ``shutil.copytree`` of the bundle."""
    target = root / f"copy-{repeat}"
    start, start_cpu = time.perf_counter(), time.process_time()
    shutil.copytree(root / "bundle", target)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    shutil.rmtree(target)
    return wall, cpu


def run(client: Client, root: Path, size: int, arguments: argparse.Namespace, server_pid: int) -> dict:
    job_id = upload_and_cancel(client, root / "bundle")  # also the warm-up upload
    latencies = []
    for _ in range(arguments.calls):
        start = time.perf_counter()
        client.job(job_id)
        latencies.append(time.perf_counter() - start)
    latencies.sort()
    samples: dict[str, list[tuple[float, float]]] = {"copy": [], "transfer": [], "validated": []}
    for repeat in range(arguments.repeats):
        samples["copy"].append(timed_copy(root, repeat))
        samples["transfer"].append(timed_upload(client, root / "transfer", server_pid))
        samples["validated"].append(timed_upload(client, root / "bundle", server_pid))
    report = {
        "status_median_ms": 1000 * statistics.median(latencies),
        "status_p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
        "status_calls": arguments.calls,
        "bundle_frames": arguments.frames, "bundle_mib": size / 2**20,
        "storage": str(root), "repeats": arguments.repeats, "cpu_count": os.cpu_count(),
    }
    for name, pairs in samples.items():
        report[f"{name}_s"] = statistics.median(wall for wall, _ in pairs)
        report[f"{name}_cpu_s"] = statistics.median(cpu for _, cpu in pairs)
        report[f"{name}_mib_s"] = size / 2**20 / report[f"{name}_s"]
    for name in ("transfer", "validated"):
        report[f"{name}_ratio"] = report["copy_s"] / report[f"{name}_s"]
        report[f"{name}_cpu_ratio"] = report["copy_cpu_s"] / report[f"{name}_cpu_s"]
        report[f"{name}_pair_ratios"] = sorted(copy[0] / upload[0] for copy, upload in zip(samples["copy"], samples[name]))
    return report


def print_table(report: dict) -> None:
    rows = [
        ("status call", f"GET /v1/jobs/{{id}} via addon.client, {report['status_calls']} calls"),
        ("status round trip median", f"{report['status_median_ms']:.2f} ms"),
        ("status round trip p95", f"{report['status_p95_ms']:.2f} ms"),
        ("bundle", f"{report['bundle_frames']} frames 832x480 RGB PNG + depth EXR + mask PNG, {report['bundle_mib']:.1f} MiB"),
        ("local copy (copytree)", f"{report['copy_s']:.3f} s = {report['copy_mib_s']:.0f} MiB/s, CPU {report['copy_cpu_s']:.3f} s"),
    ]
    for name, what in (("transfer", "upload: streamed tar, extracted, bundle.json read"), ("validated", "upload + every pass validated at submit")):
        rows += [
            (what, f"{report[f'{name}_s']:.3f} s = {report[f'{name}_mib_s']:.0f} MiB/s, CPU (client + server) {report[f'{name}_cpu_s']:.3f} s"),
            (
                f"  / copy: throughput ratio{' (goal > 0.5)' if name == 'transfer' else ''}",
                f"{report[f'{name}_ratio']:.2f} (per repeat: {', '.join(f'{ratio:.2f}' for ratio in report[f'{name}_pair_ratios'])})",
            ),
            ("  / copy: CPU-seconds ratio (load-independent)", f"{report[f'{name}_cpu_ratio']:.2f}"),
        ]
    rows += [("storage, repeats, CPUs", f"{report['storage']}, {report['repeats']} (medians), {report['cpu_count']}")]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()

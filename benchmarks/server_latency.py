"""Status latency under load and upload throughput of a real backend on 127.0.0.1.

1. Latency: ``--concurrency`` (50) concurrent ``GET /v1/jobs/{id}``, ``--rounds`` times, on
   an idle backend, with a CPU job running, and with that job running and 20 queued;
   p50/p95 in ms over every request. The client is plain asyncio streams: one keep-alive
   connection per concurrent request (opened and used once before timing), every request
   written at once, each timed from its write to its last body byte. Not httpx: its
   AsyncClient spends several times the server's CPU per request (README.md,
   Measurements, Server), so on a small machine its p95 measures the client.
2. Upload: :mod:`benchmarks.ipc`'s 49-frame 832x480 bundle (noise PNGs and EXRs) uploaded
   by the add-on's client as a streamed tar (the remote-backend path; the *transfer* twin,
   whose bundle.json lists no passes, so the server receives, extracts and reads
   bundle.json), against ``shutil.copytree`` of the same files on the same storage
   (``--tmp``, default /dev/shm: both sides measure CPU and IPC, not the disk). Median of
   ``--repeats``, with the ratio per repeat.

The backend and its job process run with ``OMP_NUM_THREADS`` = ``--threads`` (default 1).
The table says how many CPUs the machine has and its load average: on a shared machine,
run it several times and quote the spread.

    python benchmarks/server_latency.py [--concurrency 50] [--rounds 5] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from addon.client import Client  # noqa: E402
from benchmarks.ipc import make_bundle, make_transfer_twin, timed_copy, timed_upload  # noqa: E402
from tests.server.conftest import LONG, QUICK, start_backend, wait_for_progress, write_bundle  # noqa: E402


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> float:
    """One request on an open connection; its round trip in ms."""
    start = time.perf_counter()
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.decode("latin-1"))
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    await reader.readexactly(length)
    return (time.perf_counter() - start) * 1000


async def _round(port: int, token: str, path: str, concurrency: int) -> list[float]:
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(concurrency)]
    try:
        await asyncio.gather(*(_get(reader, writer, request) for reader, writer in connections))  # warm, untimed
        return list(await asyncio.gather(*(_get(reader, writer, request) for reader, writer in connections)))
    finally:
        for _, writer in connections:
            writer.close()


def measure(port: int, token: str, path: str, concurrency: int, rounds: int) -> tuple[float, float]:
    """p50 and p95 latency in ms over every request of every round."""
    ordered = sorted(ms for _ in range(rounds) for ms in asyncio.run(_round(port, token, path, concurrency)))
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def latency_rows(backend, bundle: Path, arguments: argparse.Namespace) -> list[tuple[str, float, float]]:
    client, port = backend.client(), int(backend.url.rsplit(":", 1)[1])

    def row(name: str, job_id: str) -> tuple[str, float, float]:
        return (name, *measure(port, backend.token, f"/v1/jobs/{job_id}", arguments.concurrency, arguments.rounds))

    idle = client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": QUICK}).json()["id"]
    while client.get(f"/v1/jobs/{idle}").json()["state"] in ("queued", "running"):
        time.sleep(0.1)
    rows = [row("idle", idle)]
    running = client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": LONG}).json()["id"]
    wait_for_progress(client, running)
    rows.append(row("job running", running))
    queued = [client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": QUICK}).json()["id"] for _ in range(20)]
    rows.append(row("running + 20 queued", running))
    for job_id in [running, *queued]:
        client.post(f"/v1/jobs/{job_id}/cancel")
    return rows


def upload_rows(backend, root: Path, repeats: int) -> dict[str, float | list[float]]:
    """Median wall seconds of copy and upload, and the copy/upload ratio per repeat."""
    size = make_bundle(root / "bundle", 49)
    make_transfer_twin(root / "bundle", root / "transfer")
    client = Client(backend.url)
    client.token = backend.token
    timed_upload(client, root / "transfer", backend.process.pid)  # warm-up: imports, first job process use
    copies, uploads = [], []
    for repeat in range(repeats):
        copies.append(timed_copy(root, repeat)[0])
        uploads.append(timed_upload(client, root / "transfer", backend.process.pid)[0])
    mib = size / 2**20
    return {"mib": mib, "copy_s": statistics.median(copies), "upload_s": statistics.median(uploads), "ratios": sorted(copy / upload for copy, upload in zip(copies, uploads))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tmp", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    arguments = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(arguments.threads)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=arguments.tmp, prefix="poe-latency-") as temporary:
        root = Path(temporary)
        (root / "data").mkdir()
        backend = start_backend(root / "data")
        try:
            rows = latency_rows(backend, write_bundle(root / "data" / "bundle"), arguments)
            upload = upload_rows(backend, root, arguments.repeats)
        finally:
            backend.stop()
    print(f"{os.cpu_count()} CPUs, load average {load:.1f} at start (shared machine), backend and job process threads {arguments.threads}")
    print(f"{arguments.concurrency} concurrent GET /v1/jobs/{{id}} x {arguments.rounds} rounds (goal: p95 < 100 ms)")
    print(f"{'state':<24}{'p50 ms':>10}{'p95 ms':>10}")
    for name, p50, p95 in rows:
        print(f"{name:<24}{p50:>10.1f}{p95:>10.1f}")
    mib = upload["mib"]
    print(f"bundle of {mib:.1f} MiB, median of {arguments.repeats} (goal: upload/copy >= 0.5)")
    print(f"{'local copy (copytree)':<24}{mib / upload['copy_s']:>10.0f} MiB/s")
    print(f"{'upload (streamed tar)':<24}{mib / upload['upload_s']:>10.0f} MiB/s")
    print(f"{'upload / copy':<24}{upload['copy_s'] / upload['upload_s']:>10.2f}   per repeat: {', '.join(f'{ratio:.2f}' for ratio in upload['ratios'])}")


if __name__ == "__main__":
    main()

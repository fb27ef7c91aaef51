"""Status latency under load: 50 concurrent ``GET /v1/jobs/{id}`` on a real backend
(127.0.0.1), idle / with a CPU job running / with a job running and 20 queued.

Prints a table of p50 and p95 in milliseconds over ``--rounds`` rounds of ``--concurrency``
requests (one shared async httpx client, requests issued at once). The backend runs with
``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` = ``--threads`` (default 1).

    python benchmarks/server_latency.py [--concurrency 50] [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from tests.server.conftest import LONG, QUICK, start_backend, wait_for_progress, write_bundle


async def _round(url: str, token: str, path: str, concurrency: int) -> list[float]:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, limits=httpx.Limits(max_connections=concurrency), timeout=30) as client:
        await asyncio.gather(*(client.get(path) for _ in range(concurrency)))  # open the connections before timing

        async def one() -> float:
            start = time.perf_counter()
            (await client.get(path)).raise_for_status()
            return (time.perf_counter() - start) * 1000

        return list(await asyncio.gather(*(one() for _ in range(concurrency))))


def measure(url: str, token: str, path: str, concurrency: int, rounds: int) -> tuple[float, float]:
    """p50 and p95 latency in ms over every request of every round."""
    samples = [ms for _ in range(rounds) for ms in asyncio.run(_round(url, token, path, concurrency))]
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(arguments.threads)
    with tempfile.TemporaryDirectory() as temporary:
        data_dir = Path(temporary) / "data"
        data_dir.mkdir()
        backend = start_backend(data_dir)
        try:
            client = backend.client()
            bundle = write_bundle(data_dir / "bundle")
            idle_job = client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": QUICK}).json()["id"]
            time.sleep(2)
            rows = [("idle", measure(backend.url, backend.token, f"/v1/jobs/{idle_job}", arguments.concurrency, arguments.rounds))]
            running = client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": LONG}).json()["id"]
            wait_for_progress(client, running)
            rows.append(("job running", measure(backend.url, backend.token, f"/v1/jobs/{running}", arguments.concurrency, arguments.rounds)))
            for _ in range(20):
                client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": QUICK})
            rows.append(("running + 20 queued", measure(backend.url, backend.token, f"/v1/jobs/{running}", arguments.concurrency, arguments.rounds)))
        finally:
            backend.stop()
    print(f"{arguments.concurrency} concurrent status requests x {arguments.rounds} rounds, backend threads {arguments.threads}")
    print(f"{'state':<22}{'p50 ms':>10}{'p95 ms':>10}")
    for name, (p50, p95) in rows:
        print(f"{name:<22}{p50:>10.1f}{p95:>10.1f}")


if __name__ == "__main__":
    main()

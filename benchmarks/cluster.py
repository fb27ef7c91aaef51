"""The Ray executor on a mini-cluster on this machine (issue 23, Measure), through the real
HTTP API on loopback, then the discrete-event extrapolation of
:mod:`benchmarks.cluster_model` fed with what was measured.

The cluster and the server are ``tests/cluster/conftest.py``'s: a Ray head without GPUs and
simulated nodes with one logical GPU each (``ray.cluster_utils.Cluster``; their actors run
torch on the CPU), under ``create_app`` with the Ray executor, served by uvicorn in a
thread of this process. Every job is submitted with ``POST /v1/jobs`` and watched with
``GET /v1/jobs/{id}`` every :data:`POLL_S`, as the add-on does; times come from the job records (``created``, ``started``,
``finished``: this machine's clock), the job logs and this process's clock. Jobs run
:class:`SleepTask`, which holds for a fixed time and computes nothing. Steps, in order:

1. **Throughput** against the number of workers: ``--jobs-per-worker`` (3) jobs per worker
   of ``--hold-s`` (2) seconds, submitted at once; jobs/s from the first job's creation to
   the last one's end, against the ideal (workers / hold). Measured at 2 workers (the
   fixture's nodes), at 1 (after the node-loss step), and at ``--max-workers`` (3; each
   node is a raylet and an actor with torch, about 0.5 GiB: lower it on a small machine).
   Each worker first runs one job, so a first job's imports are not measured.
2. **Node loss** (at 2 workers): a job holding for :data:`LOSS_HOLD_S`; once it runs, its
   node is removed (``Cluster.remove_node``); the time from the removal to the ``node_lost``
   line in the job's log, and to the job running again on the other node (both read every
   :data:`WATCH_POLL_S` by a thread started before the removal: it may all happen within
   ``remove_node``). The job is then cancelled. ``--loss-repeats`` (3) times, each after
   adding a node back. A node removed here is a clean stop of its processes (Ray learns it
   at once); a machine that vanishes is declared dead by Ray's health checks, later.
3. **Dispatch overhead** at 1 worker: ``--repeats`` (10) jobs one after the other, each
   ``finished - created - hold`` (HTTP submission committed to job record done, less the
   hold), and the part before the worker took it (``started - created``). Beside it, this
   process's CPU per job (the server, the store, Ray's driver, and this script's status
   reads), less its idle rate measured for :data:`IDLE_S` with the same reads; and its CPU
   rate while one job runs against none, over :data:`CPU_WINDOW_S` each without status
   reads (the executor's progress reads), which splits the CPU per job into its running
   part and the rest.
4. **Bundle transfer** at 1 worker, for bundles of ``--bundle-mib`` (1 50 200) MiB of
   random bytes (new bytes each of ``--transfer-repeats`` (2), so the node's cache never
   holds them): a zero-hold job sends the bundle, a second one with the same bundle finds
   it cached. MiB/s from the difference of their wall times (the head's hashing, the chunks
   through the object store, the node's check), and from the log line's own figure
   (``sent to ...: X MiB in Y s``, 0.1 s resolution: the chunks and the node's check, not
   the head's hashing).

Then :func:`benchmarks.cluster_model.main` runs with ``--dispatch-s`` = the median
dispatch overhead (wall time, where the model wants the head's CPU per dispatch: the
CPU figures of step 3 say how far apart they are; the model has no term for the head's
CPU per running job) and ``--transfer-mib-s`` = the wall-time rate of the largest bundle,
plus ``--model-args``. Every node runs on this machine, so transfers measure its memory,
disk and object store, not a network. Torch threads: this process's are set to
``--threads`` (1); the actors set theirs themselves (``torch_threads`` of the node's
workers), and the jobs report them. The whole default run takes 3-4 minutes on 2 cores.

    python benchmarks/cluster.py [--hold-s 2] [--jobs-per-worker 3] [--max-workers 3] [--repeats 10]
        [--bundle-mib 1 50 200] [--transfer-repeats 2] [--loss-repeats 3] [--threads 1] [--model-args "--gpu-hours 500"]
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.cluster_model import _markdown as markdown_table  # noqa: E402
from benchmarks.cluster_model import main as model_main  # noqa: E402
from poe_backend.bundle import TASK_PASSES  # noqa: E402
from poe_backend.sampling import SamplingCancelled  # noqa: E402
from poe_backend.tasks import TASK_CLASSES  # noqa: E402
from poe_backend.tasks.base import JobCost, Task, TaskContext, TaskParams, TaskResult  # noqa: E402

if TYPE_CHECKING:  # the actors import this module for SleepTask: it stays light
    import httpx

    from tests.cluster.conftest import ClusterBackend, SimulatedCluster

#: Longest hold a :class:`SleepTask` accepts (seconds).
MAX_HOLD_S = 300.0
#: Hold of the job whose node is removed (seconds): it is cancelled once it runs again.
LOSS_HOLD_S = 120.0
#: Seconds from a worker taking a job to the job surely holding (its small bundle placed).
INTO_HOLD_S = 0.5
#: Seconds between two status reads of an unfinished job (the add-on's ``POLL_INTERVAL_S``);
#: job times come from the records, so they do not depend on it.
POLL_S = 0.5
#: Seconds of idle polling that measure this process's CPU rate without a job.
IDLE_S = 5.0
#: Seconds of each window that measures this process's CPU rate with and without a running job.
CPU_WINDOW_S = 6.0
#: Seconds between two reads of what :func:`first_times` watches.
WATCH_POLL_S = 0.005
#: Longest wait for a step's jobs (seconds).
JOBS_TIMEOUT_S = 180.0
#: A job log's line for a bundle sent to a node: its MiB and seconds.
SENT_LINE = re.compile(r"sent to \S+: ([\d.]+) MiB in ([\d.]+) s")


class SleepParams(TaskParams):
    hold_s: float


class SleepTask(Task):
    """Holds for ``hold_s`` seconds (at most :data:`MAX_HOLD_S`), computing nothing; a
    cancel ends the hold as a sampler step would. Its manifest says the process and its
    torch thread count."""

    name = "bench_sleep"
    Params = SleepParams
    kind = "points"

    def run(self, context: TaskContext) -> TaskResult:
        import torch

        deadline = time.monotonic() + min(context.params.hold_s, MAX_HOLD_S)
        while (left := deadline - time.monotonic()) > 0:
            if context.should_stop is not None and context.should_stop():
                raise SamplingCancelled("while holding")
            time.sleep(min(left, 0.02))
        return TaskResult("points", "none", {}, {"pid": os.getpid(), "torch_threads": torch.get_num_threads()})

    def planned_cost(self, bundle: Any, params: TaskParams) -> JobCost:
        """No sampler, no network: one particle, nothing evaluated."""
        return JobCost(particles=1, nfe=0, forwards=0, tokens=1)


# The task is known wherever this module is imported: the head's submit checks the task and
# its bundle, and the actor that runs a job imports the task's module, then reads the bundle.
TASK_CLASSES.setdefault(SleepTask.name, f"benchmarks.cluster:{SleepTask.__name__}")
TASK_PASSES.setdefault(SleepTask.name, ())


# ---- the cluster and the server (tests/cluster/conftest.py's fixtures) ------------------
class Folders:
    """What the ``cluster`` fixture asks of pytest's ``tmp_path_factory``: ``mktemp``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def mktemp(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))


@contextlib.contextmanager
def running_cluster(root: Path) -> Iterator[tuple[SimulatedCluster, ClusterBackend]]:
    """The ``cluster`` (head + 2 GPU nodes) and ``backend`` fixtures of
    ``tests/cluster/conftest.py`` under ``root``, with this module (:class:`SleepTask`)
    importable by every node's actors."""
    import pytest

    from tests.cluster import conftest

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))  # the nodes' actors import it
        with contextlib.contextmanager(inspect.unwrap(conftest.cluster))(Folders(root)) as cluster:
            with contextlib.contextmanager(inspect.unwrap(conftest.backend))(cluster) as backend:
                yield cluster, backend


def sleep_bundle(folder: Path, payload_bytes: int = 0) -> Path:
    """A :class:`SleepTask` bundle in ``folder``: bundle.json and, when ``payload_bytes``,
    ``payload.bin`` of that many random bytes."""
    from tests.server.conftest import write_bundle

    write_bundle(folder, task=SleepTask.name, params={})
    if payload_bytes:
        with open(folder / "payload.bin", "wb") as handle:
            for offset in range(0, payload_bytes, 1 << 24):
                handle.write(os.urandom(min(1 << 24, payload_bytes - offset)))
    return folder


def submit(client: httpx.Client, bundle: Path, hold_s: float) -> str:
    response = client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": {"hold_s": hold_s}})
    if response.status_code != 201:
        raise RuntimeError(f"submitting a {SleepTask.name} job failed: {response.status_code} {response.text}")
    return response.json()["id"]


def done_records(client: httpx.Client, job_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Each job's record once finished, each unfinished job's status read every
    :data:`POLL_S` (at most :data:`JOBS_TIMEOUT_S`); RuntimeError for one that did not end
    ``done``."""
    from poe_backend.bundle import FINISHED_STATES

    records: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + JOBS_TIMEOUT_S
    while True:
        for job_id in (job_id for job_id in job_ids if job_id not in records):
            record = client.get(f"/v1/jobs/{job_id}").json()
            if record["state"] in FINISHED_STATES:
                records[job_id] = record
        if len(records) == len(job_ids):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs not finished within {JOBS_TIMEOUT_S:g} s: {sorted(set(job_ids) - set(records))}")
        time.sleep(POLL_S)
    for record in records.values():
        if record["state"] != "done":
            raise RuntimeError(f"job {record['id']} ended {record['state']}: {record['error']}")
    return [records[job_id] for job_id in job_ids]


def manifest_of(backend: ClusterBackend, job_id: str) -> dict[str, Any]:
    """The job's result.json as it came back to the head."""
    return json.loads((backend.data_dir / "jobs" / job_id / "outputs" / "result.json").read_text())


def warm_up(backend: ClusterBackend, bundle: Path, workers: int) -> None:
    """One 1-second job per worker, submitted at once (each idle worker takes one), so the
    measured jobs find every actor past its first job's imports."""
    with backend.client() as client:
        done_records(client, [submit(client, bundle, 1.0) for _ in range(workers)])


def add_workers(cluster: SimulatedCluster, backend: ClusterBackend, bundle: Path, count: int) -> None:
    """Add nodes until ``count`` workers are attached, then warm them up."""
    while len(cluster.gpu_nodes) < count:
        cluster.add_gpu_node()
    backend.workers_ready(count)
    warm_up(backend, bundle, count)


# ---- measurements -----------------------------------------------------------------------
@dataclass(frozen=True)
class Throughput:
    workers: int
    jobs: int
    hold_s: float
    span_s: float  # first job created -> last job finished
    workers_used: int  # distinct actor processes that ran the jobs

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.span_s

    @property
    def ideal_jobs_per_s(self) -> float:
        return self.workers / self.hold_s


def measure_throughput(backend: ClusterBackend, bundle: Path, workers: int, hold_s: float, jobs_per_worker: int) -> Throughput:
    """``workers * jobs_per_worker`` jobs of ``hold_s`` submitted at once on ``workers``
    attached workers."""
    backend.workers_ready(workers)
    with backend.client() as client:
        records = done_records(client, [submit(client, bundle, hold_s) for _ in range(workers * jobs_per_worker)])
    span_s = max(record["finished"] for record in records) - min(record["created"] for record in records)
    pids = {manifest_of(backend, record["id"])["pid"] for record in records}
    return Throughput(workers, len(records), hold_s, span_s, len(pids))


@dataclass(frozen=True)
class Dispatch:
    hold_s: float
    overheads_s: list[float]  # per job: finished - created - hold
    before_start_s: list[float]  # per job: started - created
    head_cpu_s: float  # this process's CPU per job, less its idle rate
    running_cpu: float  # this process's CPU seconds per second while one job runs, less without it
    actor_threads: int  # torch threads the actor ran the jobs with

    @property
    def besides_running_s(self) -> float:
        """The head's CPU per job less its part while the job runs."""
        return self.head_cpu_s - self.running_cpu * self.hold_s


def measure_dispatch(backend: ClusterBackend, bundle: Path, hold_s: float, repeats: int) -> Dispatch:
    """``repeats`` jobs holding ``hold_s``, one after the other, at 1 worker (attached);
    then the head's CPU rate while a job runs."""
    backend.workers_ready(1)
    with backend.client() as client:
        records, cpu_s, wall_s = sequential_jobs(client, bundle, hold_s, repeats)
        idle_rate = idle_cpu_rate(client, records[-1]["id"])
        running_cpu = running_cpu_rate(backend, client, bundle)
    return Dispatch(
        hold_s,
        [record["finished"] - record["created"] - hold_s for record in records],
        [record["started"] - record["created"] for record in records],
        (cpu_s - idle_rate * wall_s) / repeats,
        running_cpu,
        manifest_of(backend, records[-1]["id"])["torch_threads"],
    )


def sequential_jobs(client: httpx.Client, bundle: Path, hold_s: float, repeats: int) -> tuple[list[dict[str, Any]], float, float]:
    """``repeats`` jobs holding ``hold_s``, each submitted once the one before is done: their
    records, and this process's CPU seconds and the wall seconds they took."""
    records, cpu_s, wall_s = [], time.process_time(), time.monotonic()
    for _ in range(repeats):
        records += done_records(client, [submit(client, bundle, hold_s)])
    return records, time.process_time() - cpu_s, time.monotonic() - wall_s


def running_cpu_rate(backend: ClusterBackend, client: httpx.Client, bundle: Path) -> float:
    """This process's CPU seconds per second over :data:`CPU_WINDOW_S` while one job holds,
    less the same without a job; no status reads in either window, so what remains is the
    executor following the running job (its progress read every 0.25 s)."""
    from tests.cluster.test_ray_executor import worker_running

    quiet = cpu_rate(CPU_WINDOW_S)
    job_id = submit(client, bundle, INTO_HOLD_S + CPU_WINDOW_S + 1.0)
    worker_running(backend, job_id)
    time.sleep(INTO_HOLD_S)
    busy = cpu_rate(CPU_WINDOW_S)
    done_records(client, [job_id])
    return busy - quiet


def cpu_rate(seconds: float) -> float:
    """This process's CPU seconds per second while this thread sleeps ``seconds``."""
    cpu_s = time.process_time()
    time.sleep(seconds)
    return (time.process_time() - cpu_s) / seconds


def idle_cpu_rate(client: httpx.Client, job_id: str) -> float:
    """This process's CPU seconds per second while no job runs and a finished job's status
    is read every :data:`POLL_S` (as :func:`done_records` does), over :data:`IDLE_S`."""
    cpu_s, start = time.process_time(), time.monotonic()
    while time.monotonic() - start < IDLE_S:
        client.get(f"/v1/jobs/{job_id}")
        time.sleep(POLL_S)
    return (time.process_time() - cpu_s) / (time.monotonic() - start)


@dataclass(frozen=True)
class Transfer:
    mib: float
    sent_wall_s: float  # the job that sent the bundle, created -> finished
    cached_wall_s: float  # the next job with the same bundle
    logged_s: float  # the sent job's log line: its seconds (0.1 s steps)

    @property
    def mib_s(self) -> float:
        return self.mib / max(self.sent_wall_s - self.cached_wall_s, 1e-3)


def measure_transfer(backend: ClusterBackend, folder: Path, mib: float) -> Transfer:
    """A bundle of ``mib`` MiB of new random bytes in ``folder``: a zero-hold job sends it
    to the (only) worker's node, the next one finds it cached; the folder is removed after."""
    from tests.cluster.test_ray_executor import log_of

    bundle = sleep_bundle(folder, int(mib * 2**20))
    try:
        with backend.client() as client:
            sent, cached = (done_records(client, [submit(client, bundle, 0.0)])[0] for _ in range(2))
    finally:
        shutil.rmtree(bundle)
    sent_log, cached_log = log_of(backend, sent["id"]), log_of(backend, cached["id"])
    line = SENT_LINE.search(sent_log)
    if line is None or "already cached" not in cached_log:
        raise RuntimeError(f"the first job did not send the bundle or the second did not find it cached:\n{sent_log}\n{cached_log}")
    return Transfer(mib, sent["finished"] - sent["created"], cached["finished"] - cached["created"], float(line[2]))


@dataclass(frozen=True)
class NodeLoss:
    remove_call_s: float  # Cluster.remove_node's own duration
    to_log_s: float  # removal -> the job's node_lost log line
    to_rerun_s: float  # removal -> the job running on another worker


def measure_node_loss(cluster: SimulatedCluster, backend: ClusterBackend, bundle: Path) -> NodeLoss:
    """A job of :data:`LOSS_HOLD_S` runs; its node is removed; when its log says
    ``node_lost`` and when another worker runs it (at least 2 workers attached), both
    watched from before the removal (it may all happen within ``remove_node``); then it is
    cancelled."""
    from tests.cluster.test_ray_executor import log_of, wait_until, worker_running

    with backend.client() as client:
        job_id = submit(client, bundle, LOSS_HOLD_S)
        node_id = worker_running(backend, job_id).placement.node_id
        time.sleep(INTO_HOLD_S)
        checks = {"logged": lambda: "node_lost" in log_of(backend, job_id), "rerun": lambda: running_elsewhere(backend, job_id, node_id)}
        with first_times(checks, JOBS_TIMEOUT_S) as seen:
            removed_at = time.monotonic()
            cluster.remove_node_of(node_id)
            remove_call_s = time.monotonic() - removed_at
        client.post(f"/v1/jobs/{job_id}/cancel")
        wait_until(lambda: client.get(f"/v1/jobs/{job_id}").json()["state"] == "cancelled", what="the job to be cancelled")
    return NodeLoss(remove_call_s, seen["logged"] - removed_at, seen["rerun"] - removed_at)


@contextlib.contextmanager
def first_times(checks: dict[str, Callable[[], bool]], timeout_s: float) -> Iterator[dict[str, float]]:
    """A thread reads every check of ``checks`` each :data:`WATCH_POLL_S` from the block's
    start until each has held once (at most ``timeout_s`` after the block; RuntimeError
    past it); the yielded dict then holds, per name, the ``time.monotonic()`` it first held."""
    seen: dict[str, float] = {}
    stop = threading.Event()

    def watch() -> None:
        while len(seen) < len(checks) and not stop.is_set():
            for name, check in checks.items():
                if name not in seen and check():
                    seen[name] = time.monotonic()
            time.sleep(WATCH_POLL_S)

    thread = threading.Thread(target=watch, name="bench-watch", daemon=True)
    thread.start()
    try:
        yield seen
        thread.join(timeout_s)
    finally:
        stop.set()
        thread.join()
    if len(seen) < len(checks):
        raise RuntimeError(f"not seen within {timeout_s:g} s: {', '.join(sorted(set(checks) - set(seen)))}")


def running_elsewhere(backend: ClusterBackend, job_id: str, lost_node_id: str) -> bool:
    """Whether a worker of another node than ``lost_node_id`` runs the job."""
    return any(worker.describe()["state"] == job_id and worker.placement.node_id != lost_node_id for worker in backend.store.workers)


@dataclass(frozen=True)
class Results:
    throughputs: list[Throughput]
    dispatch: Dispatch
    transfers: list[Transfer]
    losses: list[NodeLoss]


def step(message: str, started: float) -> None:
    print(f"[{time.monotonic() - started:6.1f} s] {message}", file=sys.stderr, flush=True)


def measure_all(cluster: SimulatedCluster, backend: ClusterBackend, args: argparse.Namespace, started: float) -> Results:
    """The module docstring's steps, in the order the fixture's 2 workers allow: 2 workers,
    a node lost (1 left), then 1 worker, then up to ``--max-workers``."""
    bundle = sleep_bundle(backend.bundles / "sleep")
    warm_up(backend, bundle, 2)
    step("throughput at 2 workers", started)
    throughputs = [measure_throughput(backend, bundle, 2, args.hold_s, args.jobs_per_worker)]
    losses = []
    for repeat in range(args.loss_repeats):
        if repeat:
            add_workers(cluster, backend, bundle, 2)
        step(f"node loss {repeat + 1}/{args.loss_repeats}", started)
        losses.append(measure_node_loss(cluster, backend, bundle))
    step("dispatch overhead at 1 worker", started)
    dispatch = measure_dispatch(backend, bundle, args.hold_s, args.repeats)
    step("throughput at 1 worker", started)
    throughputs.insert(0, measure_throughput(backend, bundle, 1, args.hold_s, args.jobs_per_worker))
    transfers = []
    for mib in args.bundle_mib:
        step(f"bundle transfer, {mib:g} MiB", started)
        transfers += [measure_transfer(backend, backend.bundles / f"payload-{mib:g}-{repeat}", mib) for repeat in range(args.transfer_repeats)]
    for workers in range(3, args.max_workers + 1):
        step(f"throughput at {workers} workers (adding a node)", started)
        add_workers(cluster, backend, bundle, workers)
        throughputs.append(measure_throughput(backend, bundle, workers, args.hold_s, args.jobs_per_worker))
    return Results(throughputs, dispatch, transfers, losses)


# ---- report -----------------------------------------------------------------------------
def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.0f}"


def _spread_ms(values: Sequence[float]) -> str:
    """Median (min-max) in ms."""
    return f"{_ms(statistics.median(values))} ({_ms(min(values))}-{_ms(max(values))})"


def header(args: argparse.Namespace, load_before: tuple[float, ...], results: Results) -> str:
    import ray
    import torch

    loads = " → ".join("/".join(f"{value:.2f}" for value in load) for load in (load_before, os.getloadavg()))
    return (f"Mini-cluster on this machine (Ray {ray.__version__}): {os.cpu_count()} CPUs, load average (1/5/15 min) {loads} (start → end); "
            f"torch threads: this process (the head) {torch.get_num_threads()} (--threads), each actor {results.dispatch.actor_threads} "
            f"(set by the executor, reported by the jobs). Each node: 1 CPU and 1 logical GPU in Ray's accounting; jobs hold {args.hold_s:g} s.")


def throughput_table(throughputs: Sequence[Throughput]) -> str:
    rows = [[str(row.workers), str(row.jobs), f"{row.span_s:.2f}", f"{row.jobs_per_s:.3f}", f"{row.ideal_jobs_per_s:.3f}",
             f"{100 * row.jobs_per_s / row.ideal_jobs_per_s:.0f} %", str(row.workers_used)] for row in sorted(throughputs, key=lambda row: row.workers)]
    header_row = ["workers", "jobs", "span s", "jobs/s", "ideal jobs/s", "of ideal", "workers used"]
    return "Throughput (jobs submitted at once; span: first created → last finished):\n\n" + markdown_table(header_row, rows)


def dispatch_table(dispatch: Dispatch) -> str:
    rows = [[str(len(dispatch.overheads_s)), f"{dispatch.hold_s:g}", _spread_ms(dispatch.overheads_s), _spread_ms(dispatch.before_start_s), _ms(dispatch.head_cpu_s)]]
    header_row = ["jobs", "hold s", "overhead per job ms (finished − created − hold)", "of it before the worker took it ms", "head CPU per job ms"]
    split = (f"Head CPU: this process (the server, the store, Ray's driver), less its idle rate with the same status reads every {POLL_S:g} s. "
             f"While a job runs it takes {1000 * dispatch.running_cpu:.1f} ms per second more (the executor reads the job's progress every 0.25 s; "
             f"measured over {CPU_WINDOW_S:g} s without status reads), so {_ms(dispatch.besides_running_s)} ms per job go to the rest "
             "(its submission, records, dispatch, bundle check and outputs).")
    return "Dispatch overhead at 1 worker (jobs one after the other; median (min-max)):\n\n" + markdown_table(header_row, rows) + "\n\n" + split


def transfer_table(transfers: Sequence[Transfer]) -> str:
    rows = []
    for mib in dict.fromkeys(transfer.mib for transfer in transfers):
        same = [transfer for transfer in transfers if transfer.mib == mib]
        logged_s = statistics.median(transfer.logged_s for transfer in same)
        rows.append([f"{mib:g}", str(len(same)), f"{statistics.median(t.sent_wall_s for t in same):.2f}", f"{statistics.median(t.cached_wall_s for t in same):.2f}",
                     f"{statistics.median(t.sent_wall_s - t.cached_wall_s for t in same):.2f}", f"{statistics.median(t.mib_s for t in same):.0f}",
                     f"{logged_s:.1f} ({mib / logged_s:.0f})" if logged_s else "0.0"])
    header_row = ["bundle MiB", "repeats", "job s, sent", "job s, cached", "transfer s (sent − cached)", "MiB/s", "log line s (MiB/s), without the head's hashing"]
    return "Bundle transfer at 1 worker (a job that sends the bundle, then one that finds it cached; medians):\n\n" + markdown_table(header_row, rows)


def loss_table(losses: Sequence[NodeLoss]) -> str:
    rows = [[str(index), f"{loss.remove_call_s:.2f}", f"{loss.to_log_s:.2f}", f"{loss.to_rerun_s:.2f}"] for index, loss in enumerate(losses, 1)]
    header_row = ["loss", "remove_node call s", "removal → node_lost in the log s", "removal → running on the other node s"]
    return "A node removed mid-job (2 workers):\n\n" + markdown_table(header_row, rows)


def model_figures(results: Results) -> tuple[float, float]:
    """``(--dispatch-s, --transfer-mib-s)`` for the model: the median dispatch overhead and
    the wall-time transfer rate of the largest bundle (its fixed costs matter least)."""
    largest = max(transfer.mib for transfer in results.transfers)
    return statistics.median(results.dispatch.overheads_s), statistics.median(t.mib_s for t in results.transfers if t.mib == largest)


# ---- command line -----------------------------------------------------------------------
def arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--hold-s", type=float, default=2.0, help="seconds each throughput and dispatch job holds")
    parser.add_argument("--jobs-per-worker", type=int, default=3, help="jobs per worker in a throughput run")
    parser.add_argument("--max-workers", type=int, default=3, help="the largest cluster measured (one node and worker each; at least 2)")
    parser.add_argument("--repeats", type=int, default=10, help="jobs measured for the dispatch overhead")
    parser.add_argument("--bundle-mib", type=float, nargs="+", default=[1.0, 50.0, 200.0], help="bundle sizes measured, MiB")
    parser.add_argument("--transfer-repeats", type=int, default=2, help="sent/cached pairs per bundle size")
    parser.add_argument("--loss-repeats", type=int, default=3, help="node losses measured")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process (the head)")
    parser.add_argument("--model-args", default="", help="more options for benchmarks/cluster_model.py, one string")
    args = parser.parse_args(argv)
    if args.max_workers < 2:
        parser.error("--max-workers must be at least 2: the node-loss step needs a second node")
    if not 0 < args.hold_s <= MAX_HOLD_S:
        parser.error(f"--hold-s must be in (0, {MAX_HOLD_S:g}]")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    import torch

    args = arguments(argv)
    torch.set_num_threads(args.threads)
    load_before, started = os.getloadavg(), time.monotonic()
    step("starting the cluster (head + 2 nodes) and the server", started)
    with tempfile.TemporaryDirectory(prefix="poe-cluster-bench-") as folder, running_cluster(Path(folder)) as (cluster, backend):
        results = measure_all(cluster, backend, args, started)
        step("done measuring; stopping the cluster", started)
    dispatch_s, transfer_mib_s = model_figures(results)
    print("\n\n".join([header(args, load_before, results), throughput_table(results.throughputs), dispatch_table(results.dispatch),
                       transfer_table(results.transfers), loss_table(results.losses)]))
    model_argv = ["--dispatch-s", f"{dispatch_s:.4f}", "--transfer-mib-s", f"{transfer_mib_s:.1f}", *shlex.split(args.model_args)]
    print(f"\nThe model (benchmarks/cluster_model.py {' '.join(model_argv)}): the dispatch overhead and the {max(args.bundle_mib):g} MiB bundle's rate measured above.\n", flush=True)
    model_main(model_argv)
    step("finished", started)


if __name__ == "__main__":
    main()

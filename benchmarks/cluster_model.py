"""A discrete-event model of the backend on a cluster (issue 23, Measure): one head and N GPU
workers, fed by the head's measured costs (``benchmarks/cluster.py`` measures them; until
then the defaults are placeholders) and the real job times, extrapolated to 10-500 GPUs.

The model (its figures are options, defaults in brackets, except the bundle and output sizes):

* **Workers.** N GPUs, ``--gpus-per-node`` (8) to a node. A worker runs one job at a time
  and keeps the model family of its last job loaded (FLUX for insertion, Wan for
  sim2video); a job of another family, or its first, costs ``--model-load-min`` (1) before
  it runs.
* **Jobs.** Shots arrive as a Poisson process; a shot is ``--seeds`` (4) jobs of one task
  sharing one bundle. ``--video-share`` (0.3) of the shots are sim2video (``--video-min``
  15 on an H100, bundle 50-200 MiB uniform, 50 MiB of outputs: latents and videos), the
  rest insertion (``--insertion-min`` 1, bundle 5 MiB, 10 MiB of outputs: PNGs). The
  arrival rate makes the offered run time ``--load`` (0.9) of the cluster's GPU time. Run
  times are fixed (no variance, every GPU an H100).
* **A job's life.** It arrives in the store's one queue; a free worker takes it (the
  scheduling rule below); the head dispatches it (head CPU); its bundle crosses the head's
  link to the worker's node unless the node holds it; the worker loads its model family if
  needed, then runs it; its outputs cross the head's link back, and it is done for the user
  once they are on the head. The worker is free when the run ends. Nothing overlaps within
  one job (no model load during the bundle's transfer).
* **Head CPU**: one core (one Python interpreter). A dispatch costs ``--dispatch-s`` (0.05,
  a placeholder) of CPU; dispatches run one at a time in request order. The add-on asks for
  each active (queued or running) job's status every ``--poll-s`` (0.5: ``POLL_INTERVAL_S``
  in addon/jobs.py), each answer costing ``--status-cpu-ms`` (0.6: README, Measurements,
  Server, 0.06 s of server CPU for 100 requests). Polls come first: a dispatch runs on the
  rest of the core, but never on less than :data:`MIN_DISPATCH_SHARE` of it (the GIL's
  switch interval shares the core between runnable threads), read when it is queued.
* **Head link**: every bundle and output crosses the head at ``--transfer-mib-s`` (200, a
  placeholder), one transfer at a time in request order; a node's own network is never the
  bottleneck.
* **Bundle cache** (or none): per node, by content, unbounded. A bundle on its way counts:
  a second seed on that node waits for the same transfer. Without it every job sends its
  bundle.
* **Scheduling.** FIFO: a free worker takes the oldest queued job; a job that finds idle
  workers goes to the one idle longest. Affinity: a free worker takes the oldest of the
  first ``--lookahead`` K (8) queued jobs whose family it holds, else the oldest; but once
  the oldest has been passed over K times, the next free worker takes it (a window alone
  lets a steady stream of one family starve the other when every worker holds the first).
  A job that finds idle workers goes to the longest-idle one holding its family, else to an
  empty one, else to the longest idle.

Each GPU count runs at two offered loads: ``--load`` (0.9; the GPUs keep up, so
throughput is the arrival rate and the wait and the head's load are what differ) and
``--saturated-load`` (1.25; more work than the GPUs can run, so throughput is the
cluster's capacity). Each size is measured over ``--gpu-hours`` (2000) of GPU time (4 h at
500 GPUs, 200 h at 10: as many jobs, so as precise) after ``--warmup-h`` (1) of arrivals,
simulating nothing past them: throughput is jobs done per hour; GPU utilisation the share
of GPU time running jobs (not loading models, waiting for the head or a bundle, or idle);
model loads the share spent loading; mean wait from a job's arrival to the start of its run
(the queue, the head's dispatch, its bundle, a model load), over the jobs arriving in the
window (one not started by its end counts its wait so far); head CPU and head network the
demand in the window as a share of one core and of the link: past 100 % the head cannot
keep up and dispatches or transfers queue. The head saturates at the GPU count where
either demand reaches :data:`SATURATION` at ``--load``, interpolated between the simulated
sizes (extrapolated in proportion past the largest). Not modelled: users' uploads and
downloads (outside the cluster), failures, mixed GPUs, weight placement.

Deterministic: one ``--seed`` gives the same tables, and every policy sees the same
submissions. Prints markdown tables.

    python benchmarks/cluster_model.py [--dispatch-s 0.05] [--status-cpu-ms 0.6] [--transfer-mib-s 200]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

#: The least share of the head's core a dispatch runs on while polls want the rest.
MIN_DISPATCH_SHARE = 0.5
#: The head's demand (share of its core or link) that counts as saturated.
SATURATION = 0.8
GPU_COUNTS = (10, 50, 100, 200, 500)


@dataclass(frozen=True)
class JobKind:
    """A task as the cluster sees it: ``run_s`` seconds on a GPU with ``family`` loaded, a
    bundle of ``bundle_mib`` MiB (drawn uniformly in that range per shot) and
    ``output_mib`` MiB of outputs."""

    name: str
    family: str
    run_s: float
    bundle_mib: tuple[float, float]
    output_mib: float


@dataclass(frozen=True)
class Head:
    """The head's costs: ``dispatch_s`` seconds of CPU per job, ``status_cpu_s`` seconds of
    CPU per status answer, one poll per active job every ``poll_s`` seconds, and
    ``transfer_mib_s`` MiB/s through its link (``math.inf``: free)."""

    dispatch_s: float
    status_cpu_s: float
    poll_s: float
    transfer_mib_s: float


@dataclass(frozen=True)
class Cluster:
    """``gpus`` workers, ``gpus_per_node`` to a node; ``model_load_s`` seconds to load a
    model family."""

    gpus: int
    gpus_per_node: int
    model_load_s: float


@dataclass(frozen=True)
class Policy:
    """``affinity``: the look-ahead model-affinity rule (else FIFO) over ``lookahead``
    queued jobs; ``bundle_cache``: a bundle reaches each node once."""

    affinity: bool
    bundle_cache: bool
    lookahead: int = 8


@dataclass(frozen=True)
class Submission:
    """One job arriving at ``time_s``; ``bundle`` names its bundle's content (the seeds of
    one shot share it)."""

    time_s: float
    kind: JobKind
    bundle: int
    bundle_mib: float


@dataclass(frozen=True)
class Window:
    """The measured span of simulated time, seconds; nothing past ``end_s`` is simulated."""

    start_s: float
    end_s: float

    def covers(self, time_s: float) -> bool:
        return self.start_s <= time_s <= self.end_s

    def overlap(self, start_s: float, end_s: float) -> float:
        return max(0.0, min(end_s, self.end_s) - max(start_s, self.start_s))


@dataclass(frozen=True)
class Metrics:
    """Over one window: shares are fractions (1.0 = 100 %); ``head_cpu`` (``head_polls`` of
    it answering status polls) and ``head_network`` are demands, over 1 past saturation;
    ``cache_hits`` is the share of bundles a node already held or was receiving."""

    jobs_per_hour: float
    gpu_utilisation: float
    load_share: float
    mean_wait_s: float
    head_cpu: float
    head_polls: float
    head_network: float
    cache_hits: float


@dataclass(frozen=True)
class Workload:
    """Shots of ``seeds`` jobs, ``video_share`` of them ``video`` (else ``insertion``),
    offering ``load`` of the cluster's GPU time."""

    insertion: JobKind
    video: JobKind
    video_share: float
    seeds: int
    load: float

    def mean_run_s(self) -> float:
        return self.video_share * self.video.run_s + (1 - self.video_share) * self.insertion.run_s


def poisson_shots(workload: Workload, gpus: int, seconds: float, seed: int) -> list[Submission]:
    """The submissions of ``seconds`` of Poisson shot arrivals on ``gpus`` GPUs, in time order."""
    rng = random.Random(seed * 1_000_003 + gpus)
    shots_per_s = workload.load * gpus / (workload.seeds * workload.mean_run_s())
    submissions: list[Submission] = []
    time_s = rng.expovariate(shots_per_s)
    while time_s < seconds:
        kind = workload.video if rng.random() < workload.video_share else workload.insertion
        shot = len(submissions) // workload.seeds
        submissions += [Submission(time_s, kind, shot, rng.uniform(*kind.bundle_mib))] * workload.seeds
        time_s += rng.expovariate(shots_per_s)
    return submissions


class _Server:
    """One server taking requests in the order they come (the head's dispatcher, its link)."""

    def __init__(self) -> None:
        self.free_at = 0.0

    def serve(self, now: float, duration_s: float) -> float:
        """Queue ``duration_s`` seconds of work behind what it has; when it ends."""
        self.free_at = max(now, self.free_at) + duration_s
        return self.free_at


@dataclass(eq=False)
class _Job:
    kind: JobKind
    bundle: int
    bundle_mib: float
    arrival_s: float
    started_s: float = math.inf  # when its run starts on a GPU
    passed_over: int = 0  # younger jobs taken before it while it was the oldest


@dataclass(eq=False)
class _Worker:
    node: int
    family: str | None = None
    idle_since: float = 0.0


@dataclass
class _Tally:
    """What happened inside the window: seconds, MiB and counts."""

    done: int = 0
    run_s: float = 0.0
    load_s: float = 0.0
    dispatch_cpu_s: float = 0.0
    active_job_s: float = 0.0  # integral of the active job count over time
    sent_mib: float = 0.0
    bundles_sent: int = 0
    bundles_held: int = 0
    arrived: list[_Job] = field(default_factory=list)


class _Simulation:
    """One run of the model (the module docstring's rules); events are callables on a heap."""

    def __init__(self, cluster: Cluster, head: Head, policy: Policy, window: Window) -> None:
        self.cluster, self.head, self.policy, self.window = cluster, head, policy, window
        self.now = 0.0
        self.events: list[tuple[float, int, Callable[[], None]]] = []
        self.order = itertools.count()
        self.queue: deque[_Job] = deque()
        self.workers = [_Worker(index // cluster.gpus_per_node) for index in range(cluster.gpus)]
        # idle workers by the family they hold, each dict in the order they went idle
        self.idle: dict[str | None, dict[_Worker, None]] = {None: dict.fromkeys(self.workers)}
        self.node_bundles: dict[tuple[int, int], float] = {}  # (node, bundle) -> when it is there
        self.dispatcher, self.link = _Server(), _Server()
        self.active = 0
        self.active_changed_s = 0.0
        self.tally = _Tally()

    def run(self, submissions: Sequence[Submission]) -> Metrics:
        for submission in submissions:
            self._at(submission.time_s, partial(self._arrive, submission))
        while self.events and self.events[0][0] <= self.window.end_s:
            self.now, _, action = heapq.heappop(self.events)
            action()
        self.now = self.window.end_s
        self._count_active(0)
        return self._metrics()

    def _at(self, time_s: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.events, (time_s, next(self.order), action))

    def _count_active(self, change: int) -> None:
        self.tally.active_job_s += self.active * self.window.overlap(self.active_changed_s, self.now)
        self.active, self.active_changed_s = self.active + change, self.now

    def _arrive(self, submission: Submission) -> None:
        job = _Job(submission.kind, submission.bundle, submission.bundle_mib, self.now)
        self._count_active(+1)
        if self.window.covers(self.now):
            self.tally.arrived.append(job)
        worker = self._take_idle_worker(job.kind.family)
        if worker is None:
            self.queue.append(job)
        else:
            self._dispatch(worker, job)

    def _take_idle_worker(self, family: str) -> _Worker | None:
        """The idle worker an arriving job of ``family`` goes to (None: none idle)."""
        for held in (family, None) if self.policy.affinity else ():
            if self.idle.get(held):
                return self._wake(next(iter(self.idle[held])))
        longest_idle = [next(iter(workers)) for workers in self.idle.values() if workers]
        return self._wake(min(longest_idle, key=lambda worker: worker.idle_since)) if longest_idle else None

    def _wake(self, worker: _Worker) -> _Worker:
        del self.idle[worker.family][worker]
        return worker

    def _take_queued_job(self, worker: _Worker) -> _Job | None:
        """The queued job a free ``worker`` takes (None: the queue is empty)."""
        if not self.queue:
            return None
        oldest = self.queue[0]
        if self.policy.affinity and oldest.passed_over < self.policy.lookahead:
            for position, job in enumerate(itertools.islice(self.queue, self.policy.lookahead)):
                if job.kind.family == worker.family:
                    oldest.passed_over += position > 0
                    del self.queue[position]
                    return job
        return self.queue.popleft()

    def _dispatch(self, worker: _Worker, job: _Job) -> None:
        polls_share = self.active * self.head.status_cpu_s / self.head.poll_s
        share = max(1.0 - polls_share, MIN_DISPATCH_SHARE)
        if self.window.covers(self.now):
            self.tally.dispatch_cpu_s += self.head.dispatch_s
        self._at(self.dispatcher.serve(self.now, self.head.dispatch_s / share), partial(self._start, worker, job))

    def _start(self, worker: _Worker, job: _Job) -> None:
        """The head has dispatched ``job``: its bundle, model load and run follow."""
        ready_s = self._bundle_on_node(worker.node, job)
        run_from_s = ready_s + (0.0 if worker.family == job.kind.family else self.cluster.model_load_s)
        run_end_s = run_from_s + job.kind.run_s
        job.started_s = run_from_s
        worker.family = job.kind.family
        self.tally.load_s += self.window.overlap(ready_s, run_from_s)
        self.tally.run_s += self.window.overlap(run_from_s, run_end_s)
        self._at(run_end_s, partial(self._ran, worker, job))

    def _bundle_on_node(self, node: int, job: _Job) -> float:
        """When ``job``'s bundle is on ``node``, sending it unless the node's cache has it."""
        key = (node, job.bundle)
        if self.policy.bundle_cache and key in self.node_bundles:
            self.tally.bundles_held += self.window.covers(self.now)
            return max(self.now, self.node_bundles[key])
        self.tally.bundles_sent += self.window.covers(self.now)
        arrives_s = self._transfer(job.bundle_mib)
        if self.policy.bundle_cache:
            self.node_bundles[key] = arrives_s
        return arrives_s

    def _transfer(self, mib: float) -> float:
        """Send ``mib`` MiB through the head's link; when it has arrived."""
        if self.window.covers(self.now):
            self.tally.sent_mib += mib
        return self.link.serve(self.now, mib / self.head.transfer_mib_s)

    def _ran(self, worker: _Worker, job: _Job) -> None:
        self._at(self._transfer(job.kind.output_mib), self._done)
        following = self._take_queued_job(worker)
        if following is None:
            worker.idle_since = self.now
            self.idle.setdefault(worker.family, {})[worker] = None
        else:
            self._dispatch(worker, following)

    def _done(self) -> None:
        self._count_active(-1)
        self.tally.done += self.window.covers(self.now)

    def _metrics(self) -> Metrics:
        tally, span_s = self.tally, self.window.end_s - self.window.start_s
        gpu_s = self.cluster.gpus * span_s
        waits = [min(job.started_s, self.window.end_s) - job.arrival_s for job in tally.arrived]
        polls_cpu_s = tally.active_job_s * self.head.status_cpu_s / self.head.poll_s
        bundles = tally.bundles_sent + tally.bundles_held
        return Metrics(
            jobs_per_hour=tally.done * 3600 / span_s,
            gpu_utilisation=tally.run_s / gpu_s,
            load_share=tally.load_s / gpu_s,
            mean_wait_s=sum(waits) / len(waits) if waits else 0.0,
            head_cpu=(tally.dispatch_cpu_s + polls_cpu_s) / span_s,
            head_polls=polls_cpu_s / span_s,
            head_network=tally.sent_mib / (self.head.transfer_mib_s * span_s),
            cache_hits=tally.bundles_held / bundles if bundles else 0.0,
        )


def simulate(submissions: Sequence[Submission], cluster: Cluster, head: Head, policy: Policy, window: Window) -> Metrics:
    """Run ``submissions`` (in time order) on an idle, empty cluster up to ``window.end_s``;
    what happened inside ``window``."""
    return _Simulation(cluster, head, policy, window).run(submissions)


def saturation_gpus(demands: Sequence[tuple[int, float]], threshold: float = SATURATION) -> float:
    """The GPU count at which a head demand reaches ``threshold``, from ``(gpus, demand)``
    pairs in increasing GPU order: interpolated between the pair that brackets it, or
    extrapolated in proportion from the largest (demand grows with the GPU count)."""
    for (gpus_before, before), (gpus, demand) in itertools.pairwise([(0, 0.0), *demands]):
        if demand >= threshold:
            return gpus_before + (gpus - gpus_before) * (threshold - before) / (demand - before)
    gpus, demand = demands[-1]
    return gpus * threshold / demand if demand > 0 else math.inf


POLICIES = {
    "FIFO": Policy(affinity=False, bundle_cache=False),
    "FIFO + cache": Policy(affinity=False, bundle_cache=True),
    "affinity": Policy(affinity=True, bundle_cache=False),
    "affinity + cache": Policy(affinity=True, bundle_cache=True),
}
#: A study's results: (load, GPUs, policy name) -> metrics.
Results = dict[tuple[float, int, str], Metrics]


@dataclass(frozen=True)
class Study:
    """Every policy of :data:`POLICIES` on ``workload`` at ``load`` and ``saturated_load``
    for each of ``gpu_counts``: each size measured over ``gpu_hours`` of GPU time (so every
    size sees about as many jobs) after ``warmup_s`` seconds."""

    workload: Workload
    head: Head
    load: float
    saturated_load: float
    gpu_counts: tuple[int, ...]
    gpus_per_node: int
    model_load_s: float
    lookahead: int
    warmup_s: float
    gpu_hours: float
    seed: int

    def window(self, gpus: int) -> Window:
        return Window(self.warmup_s, self.warmup_s + self.gpu_hours * 3600 / gpus)

    def run(self) -> Results:
        """Each (load, GPU count) on one set of submissions, run under every policy."""
        results: Results = {}
        for load, gpus in itertools.product((self.load, self.saturated_load), self.gpu_counts):
            window = self.window(gpus)
            submissions = poisson_shots(replace(self.workload, load=load), gpus, window.end_s, self.seed)
            cluster = Cluster(gpus, self.gpus_per_node, self.model_load_s)
            for name, policy in POLICIES.items():
                results[load, gpus, name] = simulate(submissions, cluster, self.head, replace(policy, lookahead=self.lookahead), window)
        return results


def _percent(share: float) -> str:
    return f"{100 * share:.0f} %" if share >= 0.01 else f"{100 * share:.1f} %"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def _versus(results: Results, load: float, gpus: int, names: tuple[str, str], show: Callable[[Metrics], str]) -> str:
    """One cell: ``show`` of the first policy → the second."""
    return " → ".join(show(results[load, gpus, name]) for name in names)


AFFINITY_GAIN = ("FIFO + cache", "affinity + cache")
CACHE_GAIN = ("affinity", "affinity + cache")


def _design_table(study: Study, results: Results) -> str:
    rows = []
    for gpus in study.gpu_counts:
        m = results[study.load, gpus, "affinity + cache"]
        rows.append([str(gpus), f"{m.jobs_per_hour:.0f}", _percent(m.gpu_utilisation), _percent(m.load_share), _minutes(m.mean_wait_s),
                     f"{_percent(m.head_cpu)} ({_percent(m.head_polls)})", _percent(m.head_network), _percent(m.cache_hits)])
    header = ["GPUs", "jobs/h", "GPU util", "model loads", "mean wait", "head CPU (polls)", "head network", "cache hits"]
    return f"Load {study.load:g}, affinity + bundle cache:\n\n" + _markdown(header, rows)


def _gains_table(study: Study, results: Results) -> str:
    load = study.load
    rows = [[str(gpus),
             _versus(results, load, gpus, AFFINITY_GAIN, lambda m: _minutes(m.mean_wait_s)),
             _versus(results, load, gpus, AFFINITY_GAIN, lambda m: _percent(m.load_share)),
             _versus(results, load, gpus, CACHE_GAIN, lambda m: _percent(m.head_network)),
             _versus(results, load, gpus, CACHE_GAIN, lambda m: _minutes(m.mean_wait_s))] for gpus in study.gpu_counts]
    header = ["GPUs", "mean wait FIFO → affinity", "model loads FIFO → affinity", "head network no cache → cache", "mean wait no cache → cache"]
    return f"Load {load:g}, what affinity and the bundle cache buy:\n\n" + _markdown(header, rows)


def _capacity_table(study: Study, results: Results) -> str:
    load = study.saturated_load
    rows = [[str(gpus),
             _versus(results, load, gpus, AFFINITY_GAIN, lambda m: f"{m.jobs_per_hour:.0f}"),
             _versus(results, load, gpus, AFFINITY_GAIN, lambda m: _percent(m.gpu_utilisation)),
             _versus(results, load, gpus, AFFINITY_GAIN, lambda m: _percent(m.load_share)),
             _versus(results, load, gpus, CACHE_GAIN, lambda m: f"{m.jobs_per_hour:.0f}")] for gpus in study.gpu_counts]
    header = ["GPUs", "jobs/h FIFO → affinity", "GPU util FIFO → affinity", "model loads FIFO → affinity", "jobs/h no cache → cache"]
    return f"Load {load:g} (more work than the GPUs can run: throughput is their capacity):\n\n" + _markdown(header, rows)


def _saturation_lines(study: Study, results: Results) -> str:
    def where(name: str, demand: Callable[[Metrics], float]) -> str:
        return f"{saturation_gpus([(gpus, demand(results[study.load, gpus, name])) for gpus in study.gpu_counts]):.0f}"

    backlog = SATURATION * study.head.poll_s / study.head.status_cpu_s if study.head.status_cpu_s else math.inf
    return (f"At load {study.load:g} the head reaches {_percent(SATURATION)} of its CPU at ≈ {where('affinity + cache', lambda m: m.head_cpu)} GPUs "
            f"and of its network at ≈ {where('affinity + cache', lambda m: m.head_network)} GPUs "
            f"(≈ {where('affinity', lambda m: m.head_network)} without the bundle cache); past {study.gpu_counts[-1]} GPUs extrapolated in proportion. "
            f"Polls alone take {_percent(SATURATION)} of its CPU once ≈ {backlog:.0f} jobs are active (queued or running), whatever the GPU count.")


def report(study: Study, results: Results) -> str:
    """The markdown tables and the saturation lines of a study's results."""
    return "\n\n".join([_design_table(study, results), _gains_table(study, results), _saturation_lines(study, results), _capacity_table(study, results)])


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dispatch-s", type=float, default=0.05, help="head CPU seconds per job dispatch (placeholder until benchmarks/cluster.py)")
    parser.add_argument("--status-cpu-ms", type=float, default=0.6, help="head CPU ms per status answer")
    parser.add_argument("--poll-s", type=float, default=0.5, help="seconds between the add-on's polls of one active job")
    parser.add_argument("--transfer-mib-s", type=float, default=200.0, help="MiB/s through the head's link (placeholder until benchmarks/cluster.py)")
    parser.add_argument("--insertion-min", type=float, default=1.0, help="minutes of one insertion job on a GPU")
    parser.add_argument("--video-min", type=float, default=15.0, help="minutes of one sim2video job on a GPU")
    parser.add_argument("--model-load-min", type=float, default=1.0, help="minutes to load another model family")
    parser.add_argument("--video-share", type=float, default=0.3, help="share of shots that are sim2video")
    parser.add_argument("--seeds", type=int, default=4, help="jobs per shot (one bundle)")
    parser.add_argument("--load", type=float, default=0.9, help="offered run time as a share of the cluster's GPU time")
    parser.add_argument("--saturated-load", type=float, default=1.25, help="the same, past capacity, for the throughput comparison")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--lookahead", type=int, default=8, help="queued jobs the affinity rule looks through, and times the oldest may be passed over")
    parser.add_argument("--gpus", type=int, nargs="+", default=list(GPU_COUNTS))
    parser.add_argument("--warmup-h", type=float, default=1.0, help="hours simulated before measuring")
    parser.add_argument("--gpu-hours", type=float, default=2000.0, help="GPU hours measured per size (4 h at 500 GPUs, 200 h at 10)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _arguments(argv)
    study = Study(
        workload=Workload(
            insertion=JobKind("insertion", "flux", args.insertion_min * 60, (5.0, 5.0), 10.0),
            video=JobKind("sim2video", "wan", args.video_min * 60, (50.0, 200.0), 50.0),
            video_share=args.video_share, seeds=args.seeds, load=args.load,
        ),
        head=Head(args.dispatch_s, args.status_cpu_ms / 1000, args.poll_s, args.transfer_mib_s),
        load=args.load, saturated_load=args.saturated_load, gpu_counts=tuple(sorted(args.gpus)), gpus_per_node=args.gpus_per_node,
        model_load_s=args.model_load_min * 60, lookahead=args.lookahead, warmup_s=args.warmup_h * 3600, gpu_hours=args.gpu_hours, seed=args.seed,
    )
    print(f"Figures: {vars(args)}\n")
    print(report(study, study.run()))


if __name__ == "__main__":
    main()

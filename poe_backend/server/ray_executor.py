"""The Ray executor (``serve --executor ray``): one long-lived actor per GPU of a Ray
cluster runs jobs and keeps its models loaded between them; the job store stays the only
queue (:mod:`poe_backend.server.executor`). This is the only module that imports Ray
(``pip install -e ".[cluster]"``).

**Connecting.** Without an address :class:`RayExecutor` starts a new local Ray instance
(``ray.init(address="local")``: never a cluster it finds on this machine) without the
dashboard and with Ray's token authentication (``RAY_AUTH_MODE=token`` is set in this
process first; Ray then makes a token in ``~/.ray/auth_token`` when none exists). With an address it joins that cluster only when
token authentication is configured here (``RAY_AUTH_MODE=token`` and a token in
``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``), else
:class:`ClusterRefused`: without it anyone who reaches the cluster's ports runs code on
every box. The server process itself never touches CUDA: it makes no actor of its own.

**Membership.** A thread reads ``ray.nodes()`` every :data:`MEMBERSHIP_POLL_S`. A node that
joins gets one :class:`JobActor` per GPU it declares (``num_gpus=1``, pinned to it with a
``NodeAffinitySchedulingStrategy``; Ray sets the actor's ``CUDA_VISIBLE_DEVICES``, so its
torch device is ``cuda:0``), or, with ``devices=["cpu", ...]`` (``--devices cpu,cpu``), one
CPU actor (``num_cpus=1``) per entry. A worker is attached to the store once its actor
answered (:meth:`JobActor.hello`); a node that leaves has its workers detached, and the job
one of them ran ends with :class:`~poe_backend.server.executor.NodeLost` from ``run``. A
node's GPU count is read once, when it joins (Ray fixes it at ``ray start``). For clusters
simulated on one machine (``ray.cluster_utils.Cluster``, nodes declaring logical GPUs) the
option ``gpu_device="cpu"`` makes the actors on those GPUs run torch on the CPU; it is
never chosen by itself.

**An actor.** ``max_restarts=-1``: a dead actor (the OOM killer, a segfault) is restarted by
Ray; ``max_task_retries=0``: Ray never runs a job again by itself (a 15-minute job must not
re-run silently). It runs :func:`~poe_backend.server.worker.run_order`, as the embedded
executor's job process does, with progress and cancel flags in its own memory; its control
methods (progress, cancel, hello, the weights check) run in a concurrency group of their
own, so they never wait behind the running job. Ray forces ``OMP_NUM_THREADS=1`` in actors,
so the actor sets torch's threads itself: :func:`~poe_backend.server.worker.torch_threads`
of its node's CPUs shared among the actors of that node.

**The head's worker** (:class:`RayWorker`, the store's :class:`~poe_backend.server.executor.Worker`)
reads the actor's progress every :data:`PROGRESS_POLL_S` while a job runs and serves
``progress()`` from that copy, so a status request never waits on the cluster. A job's
bundle goes to the actor's machine through Ray's object store in chunks, unless that
machine already holds its digest (:mod:`poe_backend.server.ray_files`); bundles under
``shared_root`` (``--shared-root``, a filesystem every box mounts at the same path) are
read in place. The outputs come back the same way into the job's ``outputs/`` on the head,
then the node's copy is removed. The job's log says where the bundle came from.

**Failures.** A job that raises fails as with the embedded executor (its outcome comes
back). When the actor dies mid-job, the worker waits for Ray to restart it (at most
:data:`RESTART_WAIT_S`): if the node is still alive the job fails ``worker_died`` and the
restarted actor takes the next job; if the node left the cluster (``ray.nodes()`` says it
is not alive) ``run`` raises ``NodeLost``. Ray reports a killed actor as
``ActorUnavailableError`` while it restarts (``ActorDiedError`` once it cannot), and an
actor pinned to a node that is gone as ``ActorUnschedulableError``.

**Refusals** (:meth:`RayWorker.refusal`): a worker whose node runs another backend version
or API version than the head refuses every job; otherwise it refuses a job whose weights
are not on its node, or whose models' weight files exceed its device's memory plus its
node's RAM less :data:`~poe_backend.runtime.planner.HOST_BASELINE_BYTES` (the planner
offloads what the card cannot hold, so this is the coarse bound; the finer plan is made
when the job runs, as on one machine). The answer is asked of the actor once per set of
roles and preset (a task's roles come from its params,
:func:`~poe_backend.tasks.requirements.required_roles`); a "missing" answer is asked again
after :data:`WEIGHTS_RECHECK_S`, so a ``poe-backend models pull`` on that box is noticed.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorUnschedulableError, GetTimeoutError, RayActorError, RayError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from poe_backend import __version__
from poe_backend.bundle import API_VERSION
from poe_backend.server.errors import JobFailure
from poe_backend.server.executor import NodeLost, Worker
from poe_backend.server.ray_files import CACHE_BYTES, DigestMemo, Manifest, NodeFiles, TransferError, file_manifest, read_chunks, write_chunk
from poe_backend.server.worker import PROGRESS_FIELDS, JobOrder, JobOutcome, WorkerStopped, decode_progress, run_order, torch_threads

#: Seconds between two reads of the cluster's nodes (joins and losses are seen this late).
MEMBERSHIP_POLL_S = 1.0
#: Seconds between two reads of a running job's progress on its actor (a status request
#: serves the latest read, at most this old). Each read costs the head CPU for every
#: running job (``benchmarks/cluster.py`` measures it per running job): at 0.25 s that
#: alone filled a core at ~130 running jobs, so progress is read once a second.
PROGRESS_POLL_S = 1.0
#: Bundle chunks sent and not yet written on the node (each :data:`~poe_backend.server.ray_files.CHUNK_BYTES`).
CHUNKS_IN_FLIGHT = 4
#: Longest wait of :meth:`RayWorker.refusal` for its node's answer about a job's weights
#: (seconds; the store asks it under its lock).
REFUSAL_WAIT_S = 0.1
#: Longest wait for Ray to restart a dead actor (seconds); beyond it the worker refuses
#: every job, saying so.
RESTART_WAIT_S = 120.0
#: Seconds after which a worker asks its node again about weights it lacked.
WEIGHTS_RECHECK_S = 60.0
#: Ray namespace of the backend's actors.
NAMESPACE = "poe-backend"
#: Ray's error types for an actor lost before its task finished (dead, restarting, or its node gone).
ACTOR_LOST = (RayActorError, ActorUnschedulableError)


class ClusterRefused(RuntimeError):
    """Joining the Ray cluster was refused: token authentication is not configured."""


def token_auth_problem(environ: dict[str, str]) -> str | None:
    """Why this process must not join a Ray cluster with ``environ``, or None: Ray's token
    authentication needs ``RAY_AUTH_MODE=token`` and a token (``RAY_AUTH_TOKEN``, the file
    ``RAY_AUTH_TOKEN_PATH`` names, else ``~/.ray/auth_token``; Ray's own order)."""
    if environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return "RAY_AUTH_MODE is not 'token': set RAY_AUTH_MODE=token, as on every node of the cluster (docs.ray.io: Ray token authentication)"
    if environ.get("RAY_AUTH_TOKEN"):
        return None
    path = Path(environ["RAY_AUTH_TOKEN_PATH"]) if environ.get("RAY_AUTH_TOKEN_PATH") else Path.home() / ".ray" / "auth_token"
    if path.is_file() and path.read_text().strip():
        return None
    return f"no Ray token: set RAY_AUTH_TOKEN, or put the cluster's token (`ray get-auth-token` on the head node) in {path}"


def read_auth_settings() -> None:
    """Make the Ray imported in this process read its token authentication settings from
    the environment again. Ray reads ``RAY_AUTH_MODE`` when it is imported and loads the
    token once, so a mode or token set afterwards is otherwise ignored (a local instance
    then fails to start, a cluster refuses the connection). Ray's own switch to token mode
    does the same (``Config.initialize``, then a fresh token cache: private Ray APIs,
    checked with Ray 2.60)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def connect_ray(address: str | None, num_cpus: int | None) -> None:
    """Start a local Ray instance (``address`` None; ``num_cpus`` None: Ray counts them)
    with token authentication (``RAY_AUTH_MODE=token``: Ray makes a token in
    ``~/.ray/auth_token`` if there is none) and no dashboard, or join the cluster at
    ``address`` (its token checked by :class:`RayExecutor` first)."""
    if address is None:
        os.environ["RAY_AUTH_MODE"] = "token"
    read_auth_settings()
    if address is None:  # "local": a new instance, never a cluster found on this machine (``ray.init()`` would join one)
        ray.init(address="local", include_dashboard=False, num_cpus=num_cpus, namespace=NAMESPACE)
    else:
        ray.init(address=address, namespace=NAMESPACE)


def version_refusal(node: str, hello: dict[str, Any]) -> str | None:
    """Why a worker whose actor answered ``hello`` (:meth:`JobActor.hello`) takes no jobs:
    another backend or API version than this head's; None when they match."""
    if (hello["version"], hello["api_version"]) == (__version__, API_VERSION):
        return None
    return f"the worker on {node} runs poe-backend {hello['version']} (API {hello['api_version']}) and the head {__version__} (API {API_VERSION}): install the same lockfile on every box"


def node_alive(node_id: str) -> bool:
    return any(node["NodeID"] == node_id and node["Alive"] for node in ray.nodes())


# ---- on the worker's node ---------------------------------------------------------------
class ProgressSlot:
    """The latest progress report, ``[seq, *fields]``, in the actor's memory, with the
    interface :func:`run_order` writes through (``get_lock()``, slice assignment)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = [0.0] * (1 + len(PROGRESS_FIELDS))

    def get_lock(self) -> threading.Lock:
        return self._lock

    def __setitem__(self, index: slice, values: list[float]) -> None:
        self._values[index] = values

    def __getitem__(self, index: slice) -> list[float]:
        return self._values[index]


@dataclasses.dataclass
class CancelFlag:
    """The number of the order to cancel (:func:`run_order` compares it with its own)."""

    value: int = 0


def read_device_memory(device: str) -> tuple[int | None, int | None]:
    """Free and total bytes of a CUDA ``device``; None off CUDA."""
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None, None
    free, total = torch.cuda.mem_get_info(torch.device(device))
    return int(free), int(total)


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@ray.remote(max_restarts=-1, max_task_retries=0, concurrency_groups={"control": 4})
class JobActor:
    """Runs one job at a time on ``device`` of its node and keeps its models between jobs
    (:data:`~poe_backend.runtime.cache.MODEL_CACHE` is this process's own). Its files live
    in ``<files_root>/<host name>`` (:class:`~poe_backend.server.ray_files.NodeFiles`),
    shared with the other actors of its machine: a bundle cached there serves them all."""

    def __init__(self, device: str, workers_on_node: int, files_root: str, cache_bytes: int) -> None:
        import torch

        torch.set_num_threads(torch_threads(workers_on_node))
        self.device = device
        self.files = NodeFiles(Path(files_root).expanduser() / socket.gethostname(), cache_bytes)
        self.progress = ProgressSlot()
        self.cancel_seq = CancelFlag()
        self.memory = read_device_memory(device)

    @ray.method(concurrency_group="control")
    def hello(self) -> dict[str, Any]:
        """Who this actor is: backend and API version, process id, device memory."""
        return {"version": __version__, "api_version": API_VERSION, "pid": os.getpid(), "memory": self.memory}

    @ray.method(concurrency_group="control")
    def status(self) -> tuple[list[float], tuple[int | None, int | None]]:
        """The latest progress report ``[seq, *fields]`` and the device memory as last read."""
        with self.progress.get_lock():
            return self.progress[:], self.memory

    @ray.method(concurrency_group="control")
    def cancel(self, seq: int) -> None:
        self.cancel_seq.value = seq

    @ray.method(concurrency_group="control")
    def weights_refusal(self, roles: list[str], preset: str) -> str | None:
        """Why this node cannot run a job needing ``roles`` under ``preset``: weights
        missing here, or more weight bytes than the device and host memory hold together."""
        from poe_backend.models import lookup
        from poe_backend.models.specs import MissingWeights
        from poe_backend.runtime.planner import HOST_BASELINE_BYTES

        try:
            lookup.check_available(roles, preset)
            needed = sum(lookup.weight_bytes(role, preset) for role in roles)
        except MissingWeights as error:
            return f"the weights are not on this worker's node: {error}"
        except (OSError, KeyError, ValueError) as error:  # a preset file or role this machine does not have
            return f"the job's models cannot be checked on this worker's node: {error}"
        room = host_memory_bytes() - HOST_BASELINE_BYTES + (self.memory[1] or 0)
        if needed > room:
            return f"the job's models take {needed / 2**30:.1f} GiB, more than this worker's {self.device} and its node's RAM hold ({room / 2**30:.1f} GiB)"
        return None

    def has_bundle(self, digest: str) -> bool:
        return self.files.has_bundle(digest)

    def begin_bundle(self, digest: str) -> None:
        self.files.begin_bundle(digest)

    def write_bundle_chunk(self, digest: str, relative: str, offset: int, data: bytes) -> None:
        write_chunk(self.files.incoming_dir(digest), relative, offset, data)

    def commit_bundle(self, digest: str, manifest: Manifest) -> None:
        self.files.commit_bundle(digest, manifest)

    def run(self, order: JobOrder, digest: str | None) -> JobOutcome:
        """Run ``order`` with its bundle from the cache (``digest``; None: read in place
        from a shared root) and its outputs in a fresh folder of this node."""
        bundle_dir = order.bundle_dir if digest is None else str(self.files.bundle_dir(digest))
        local = dataclasses.replace(order, bundle_dir=bundle_dir, out_dir=str(self.files.fresh_outputs_dir(order.job_id, order.seq)))
        outcome = run_order(local, self.device, self.progress, self.cancel_seq)
        self.memory = read_device_memory(self.device)
        return outcome

    @ray.method(num_returns="streaming")
    def send_outputs(self, job_id: str, seq: int):
        """Every chunk ``(relative path, offset, bytes)`` of the order's outputs, then
        the node's copy is removed."""
        folder = self.files.outputs_dir(job_id, seq)
        yield from read_chunks(folder, file_manifest(folder))
        self.files.drop_outputs(job_id, seq)


# ---- on the head ------------------------------------------------------------------------
class Ticker:
    """Calls ``on_wait`` every ``wait_s`` seconds of a job, whatever phase it is in."""

    def __init__(self, wait_s: float, on_wait: Callable[[], None]) -> None:
        self.wait_s, self.on_wait, self.last = wait_s, on_wait, time.monotonic()

    def tick(self) -> None:
        if time.monotonic() - self.last >= self.wait_s:
            self.on_wait()
            self.last = time.monotonic()


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a worker's actor lives: its node (id, address) and device, the Ray
    resources it holds, and how many workers share the node (its torch threads)."""

    node_id: str
    address: str
    device: str
    resources: dict[str, float]
    workers_on_node: int

    @property
    def node(self) -> str:
        """The node as ``/v1/health`` shows it: address and the node id's first 8 hex digits."""
        return f"{self.address}/{self.node_id[:8]}"


class RayWorker:
    """The store's handle on one :class:`JobActor` (the :class:`~poe_backend.server.executor.Worker`
    protocol)."""

    def __init__(self, placement: Placement, *, files_root: str, cache_bytes: int, shared_root: Path | None, digests: DigestMemo) -> None:
        self.placement, self.files_root, self.cache_bytes, self.shared_root, self.digests = placement, files_root, cache_bytes, shared_root, digests
        self.device, self.node = placement.device, placement.node
        self.loaded_models: list[str] = []
        self.pid: int | None = None
        self._memory: tuple[int | None, int | None] = (None, None)
        self._progress: list[float] | None = None
        self._running: str | None = None
        self.version_refusal: str | None = None
        self._broken: str | None = None
        self._weights: dict[tuple[str, tuple[str, ...]], tuple[str | None, float]] = {}  # (preset, roles) -> answer, when
        self._asking: dict[tuple[str, tuple[str, ...]], Any] = {}  # (preset, roles) -> the pending question
        self._lost = threading.Event()
        self._stopping = False
        self._actor: Any = None
        self._hello: Any = None

    # ---- life -----------------------------------------------------------------------
    def start(self) -> None:
        """Create the actor on its node; it answers :meth:`ready` once it has imported torch."""
        strategy = NodeAffinitySchedulingStrategy(self.placement.node_id, soft=False)
        self._actor = JobActor.options(scheduling_strategy=strategy, **self.placement.resources).remote(self.device, self.placement.workers_on_node, self.files_root, self.cache_bytes)
        self._hello = self._actor.hello.remote()

    def ready(self) -> bool:
        """Whether the actor has answered; raises the Ray error of an actor that could not start."""
        if self._hello is None:
            return True
        if not ray.wait([self._hello], timeout=0)[0]:
            return False
        self._greet(ray.get(self._hello))
        self._hello = None
        return True

    def _greet(self, hello: dict[str, Any]) -> None:
        self.pid, self._memory = hello["pid"], tuple(hello["memory"])
        self.version_refusal = version_refusal(self.node, hello)

    def stop(self) -> None:
        """Kill the actor for good; a job it runs ends without an outcome (:class:`WorkerStopped`)."""
        self._stopping = True
        if self._actor is not None:
            ray.kill(self._actor, no_restart=True)

    def lose(self) -> None:
        """Its node left the cluster: a running job ends with :class:`NodeLost`; the actor is gone."""
        self._lost.set()
        self.stop()

    # ---- jobs -----------------------------------------------------------------------
    def run(self, order: JobOrder, wait_s: float, on_wait: Callable[[], None]) -> JobOutcome:
        """Send the bundle (unless cached on the node), run ``order`` on the actor, bring the
        outputs back into ``order.out_dir``; ``on_wait`` every ``wait_s`` seconds throughout."""
        ticker = Ticker(wait_s, on_wait)
        self._running, self._progress = order.job_id, None
        try:
            digest, note = self._place_bundle(order, ticker)
            outcome = self._await(self._actor.run.remote(order, digest), ticker, progress=True)
            self._fetch_outputs(order, ticker)
        except ACTOR_LOST as error:
            return self._after_loss(order, error)
        except RayTaskError as error:  # a file step raised on the node (TransferError, a full disk)
            return self._transfer_failure(error.cause, str(error))
        except (TransferError, OSError) as error:  # writing the outputs on the head
            return self._transfer_failure(error, None)
        finally:
            self._running = None
        self.loaded_models = outcome.loaded_models
        return dataclasses.replace(outcome, log="\n".join(filter(None, [note, outcome.log])))

    def _transfer_failure(self, error: BaseException, log: str | None) -> JobOutcome:
        return JobOutcome("failed", JobFailure("transfer_failed", f"moving the job's files between the head and {self.node} failed: {error}"), log=log)

    def _place_bundle(self, order: JobOrder, ticker: Ticker) -> tuple[str | None, str]:
        """The bundle's digest on the node (None: read in place under the shared root) and
        a line for the job's log."""
        folder = Path(order.bundle_dir)
        if self.shared_root is not None and folder.resolve().is_relative_to(self.shared_root):
            return None, f"bundle read in place under the shared root {self.shared_root}"
        digest, manifest = self.digests.digest(folder)
        if self._await(self._actor.has_bundle.remote(digest), ticker):
            return digest, f"bundle {digest[:12]} already cached on {self.node}"
        start = time.monotonic()
        self._await(self._actor.begin_bundle.remote(digest), ticker)
        pending: list[Any] = []
        for relative, offset, data in read_chunks(folder, manifest):
            pending.append(self._actor.write_bundle_chunk.remote(digest, relative, offset, data))
            while len(pending) >= CHUNKS_IN_FLIGHT:
                done, pending = ray.wait(pending, num_returns=1)
                self._await(done[0], ticker)
        for ref in pending:
            self._await(ref, ticker)
        self._await(self._actor.commit_bundle.remote(digest, manifest), ticker)
        size = sum(size for _, size in manifest)
        return digest, f"bundle {digest[:12]} sent to {self.node}: {size / 2**20:.1f} MiB in {time.monotonic() - start:.1f} s"

    def _fetch_outputs(self, order: JobOrder, ticker: Ticker) -> None:
        """Write the order's outputs from the node into ``order.out_dir``."""
        for ref in self._actor.send_outputs.remote(order.job_id, order.seq):
            relative, offset, data = self._await(ref, ticker)
            write_chunk(Path(order.out_dir), relative, offset, data)

    def _await(self, ref: Any, ticker: Ticker, *, progress: bool = False) -> Any:
        """``ref``'s value, waiting in steps of :data:`PROGRESS_POLL_S`: each step ticks,
        reads the job's progress when ``progress``, and ends the wait with
        :class:`NodeLost` once the node is known lost, :class:`WorkerStopped` once stopped."""
        status = None
        while True:
            if self._lost.is_set():
                raise NodeLost(f"the node {self.node} left the cluster while running a job on {self.device}")
            if self._stopping:
                raise WorkerStopped(self.device)
            if ray.wait([ref], timeout=PROGRESS_POLL_S)[0]:
                return ray.get(ref)
            if progress:
                status = self._read_status(status)
            ticker.tick()

    def _read_status(self, pending: Any) -> Any:
        """Keep one status call in flight: take its answer when it came, then ask again."""
        if pending is None:
            return self._actor.status.remote()
        if not ray.wait([pending], timeout=0)[0]:
            return pending
        try:
            self._progress, memory = ray.get(pending)
            self._memory = tuple(memory)
        except RayError:
            return None  # the job's own call reports the loss
        return self._actor.status.remote()

    def _after_loss(self, order: JobOrder, error: RayError) -> JobOutcome:
        """The actor was lost mid-job: :class:`NodeLost` if its node left the cluster,
        :class:`WorkerStopped` if :meth:`stop` ended it, else (it died and Ray restarts it)
        a ``worker_died`` outcome once it answers again."""
        deadline = time.monotonic() + RESTART_WAIT_S
        while time.monotonic() < deadline:
            if self._stopping and not self._lost.is_set():
                raise WorkerStopped(self.device) from None
            if self._lost.is_set() or not node_alive(self.placement.node_id):
                self._lost.set()  # refuse every job until the membership thread detaches this worker
                raise NodeLost(f"the node {self.node} left the cluster while job {order.job_id} ran on {self.device}") from None
            try:
                hello = ray.get(self._actor.hello.remote(), timeout=1.0)
            except (*ACTOR_LOST, GetTimeoutError):
                time.sleep(0.2)
                continue
            self._greet(hello)
            self.loaded_models = []
            message = (
                f"the job's worker process on {self.node} ({self.device}) died (out of host memory, or a crash in a native library); "
                "Ray restarted it: submit again, perhaps with params preset: 'preview'"
            )
            return JobOutcome("failed", JobFailure("worker_died", message), log=str(error))
        self._broken = f"the worker on {self.node} ({self.device}) died and Ray did not restart it within {RESTART_WAIT_S:.0f} s"
        return JobOutcome("failed", JobFailure("worker_died", self._broken), log=str(error))

    def progress(self, seq: int) -> dict[str, Any] | None:
        """The progress of order ``seq`` as last read from the actor (None before its first step)."""
        values = self._progress
        if values is None or values[0] != seq:
            return None
        return decode_progress(values[1:])

    def cancel(self, seq: int) -> None:
        """Ask order ``seq`` to stop at its next sampler step or checkpoint (sent, not awaited)."""
        self._actor.cancel.remote(seq)

    def device_memory(self) -> tuple[int | None, int | None]:
        return self._memory

    def refusal(self, order: JobOrder) -> str | None:
        """Why this worker cannot run ``order`` (see the module's docstring), or None. The
        store asks under its lock, so this never waits on the node longer than
        :data:`REFUSAL_WAIT_S`: an answer not in by then refuses for now ("asking"), and
        the store asks again."""
        if self._lost.is_set():
            return f"{self.node} left the cluster"
        if self._broken or self.version_refusal:
            return self._broken or self.version_refusal
        roles = job_roles(order)
        if not roles:
            return None
        key = (order.models, roles)
        known = self._weights.get(key)
        if known is not None and (known[0] is None or time.monotonic() - known[1] < WEIGHTS_RECHECK_S):
            return known[0]
        if key not in self._asking:
            self._asking[key] = self._actor.weights_refusal.remote(list(roles), order.models)
        if not ray.wait([self._asking[key]], timeout=REFUSAL_WAIT_S)[0]:
            return f"asking {self.node} whether the job's weights are there"
        try:
            answer = ray.get(self._asking.pop(key))
        except RayError as error:
            return f"{self.node} did not say whether it has the job's weights ({type(error).__name__}); it is asked again"
        self._weights[key] = (None if answer is None else f"{self.node}: {answer}", time.monotonic())
        return self._weights[key][0]

    def describe(self) -> dict[str, Any]:
        """``state``: the running job's id, ``idle``, or ``refusing`` (another backend
        version, or an actor that did not restart: its refusal says which)."""
        free, total = self._memory
        state = self._running or ("refusing" if self._broken or self.version_refusal or self._lost.is_set() else "idle")
        return {"node": self.node, "device": self.device, "memory_free": free, "memory_total": total, "loaded_models": list(self.loaded_models), "state": state}


def job_roles(order: JobOrder) -> tuple[str, ...]:
    """The model roles ``order`` loads (sorted); none for a task the weights manager does
    not know (it checks its own weights when it runs)."""
    from poe_backend.tasks.requirements import required_roles

    try:
        return tuple(sorted(required_roles(order.task, order.params, order.models)))
    except (KeyError, ValueError):
        return ()


class RayExecutor:
    """One :class:`RayWorker` per GPU of the cluster at ``address`` (None: a local Ray
    instance), or per entry of ``devices`` (only ``"cpu"``) on each node. Raises
    :class:`ClusterRefused` for an ``address`` while token authentication is not configured
    (:func:`token_auth_problem`), ValueError for a device other than ``cpu``.

    ``gpu_device``: the torch device of an actor on a Ray GPU (``cuda:0``: Ray makes its
    GPU the only visible one; ``cpu`` for simulated clusters of logical GPUs);
    ``shared_root``: bundles under it are read in place on every node;
    ``files_root``: where each node keeps its bundle cache and job outputs (``~`` is the
    node's home); ``cache_bytes``: the bound of a node's bundle cache."""

    def __init__(
        self, address: str | None = None, *, devices: list[str] | None = None, gpu_device: str = "cuda:0", shared_root: Path | None = None,
        files_root: str = "~/.cache/poe-backend/cluster", cache_bytes: int = CACHE_BYTES,
    ) -> None:
        if devices and set(devices) != {"cpu"}:
            raise ValueError(f"with the Ray executor, devices may only be cpu (one CPU worker per entry on each node); GPUs come from the cluster, got {','.join(devices)}")
        problem = None if address is None else token_auth_problem(dict(os.environ))
        if problem is not None:
            raise ClusterRefused(f"refusing to join the Ray cluster at {address} without token authentication: {problem}")
        self.address, self.devices, self.gpu_device = address, devices or [], gpu_device
        self.shared_root = None if shared_root is None else shared_root.resolve()
        self.files_root, self.cache_bytes = files_root, cache_bytes
        self._digests = DigestMemo()
        self._nodes: dict[str, list[RayWorker]] = {}
        self._starting: list[RayWorker] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._attach: Callable[[Worker], None] = lambda worker: None
        self._detach: Callable[[Worker], None] = lambda worker: None

    @property
    def workers(self) -> list[RayWorker]:
        """Every worker of a node in the cluster, started or starting."""
        return [worker for workers in list(self._nodes.values()) for worker in workers]

    def start(self, attach: Callable[[Worker], None], detach: Callable[[Worker], None]) -> None:
        """Connect to Ray (:func:`connect_ray`), start the workers of the nodes there now,
        and follow the membership from then on."""
        self._attach, self._detach = attach, detach
        connect_ray(self.address, max(os.cpu_count() or 1, len(self.devices)) if self.devices and self.address is None else None)
        self._follow_once()
        self._thread = threading.Thread(target=self._follow, name="poe-ray-membership", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following, kill every actor and disconnect from Ray."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for worker in self.workers:
            worker.stop()
        ray.shutdown()

    def _follow(self) -> None:
        while not self._stop.wait(MEMBERSHIP_POLL_S):
            try:
                self._follow_once()
            except RayError as error:  # the head's GCS unreachable for a moment: try again
                print(f"poe-backend: reading the Ray cluster's nodes failed: {error}", flush=True)

    def _follow_once(self) -> None:
        alive = {node["NodeID"]: node for node in ray.nodes() if node["Alive"]}
        for node_id in [node_id for node_id in self._nodes if node_id not in alive]:
            self._lose_node(node_id)
        for node_id, node in alive.items():
            if node_id not in self._nodes:
                self._nodes[node_id] = self._start_workers(node)
        for worker in list(self._starting):
            self._attach_when_ready(worker)

    def _start_workers(self, node: dict[str, Any]) -> list[RayWorker]:
        placements = self._placements(node)
        workers = [RayWorker(placement, files_root=self.files_root, cache_bytes=self.cache_bytes, shared_root=self.shared_root, digests=self._digests) for placement in placements]
        for worker in workers:
            worker.start()
        self._starting.extend(workers)
        return workers

    def _placements(self, node: dict[str, Any]) -> list[Placement]:
        """One placement per GPU the node declares, or per CPU entry of ``devices``."""
        node_id, address = node["NodeID"], node["NodeManagerAddress"]
        if self.devices:
            count, device, resources = len(self.devices), "cpu", {"num_cpus": 1}
        else:
            count, device, resources = int(node["Resources"].get("GPU", 0)), self.gpu_device, {"num_gpus": 1, "num_cpus": 0}
        return [Placement(node_id, address, device, resources, count) for _ in range(count)]

    def _attach_when_ready(self, worker: RayWorker) -> None:
        try:
            if not worker.ready():
                return
        except RayError as error:
            print(f"poe-backend: the worker on {worker.node} could not start: {error}", flush=True)
            self._starting.remove(worker)
            return
        self._starting.remove(worker)
        if worker.version_refusal:
            print(f"poe-backend: {worker.version_refusal}; it takes no jobs", flush=True)
        self._attach(worker)

    def _lose_node(self, node_id: str) -> None:
        """Detach the node's workers first (the store offers them no job from then on), then
        end the job each one runs (:class:`NodeLost`)."""
        for worker in self._nodes.pop(node_id):
            if worker in self._starting:
                self._starting.remove(worker)
            else:
                self._detach(worker)
            worker.lose()

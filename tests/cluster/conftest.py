"""A Ray cluster simulated on this machine (``ray.cluster_utils.Cluster``: a head without
GPUs and nodes with one logical GPU each, their actors running torch on the CPU), and the
real HTTP server over it, started in this process with the Ray executor."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from poe_backend.models import lookup
from poe_backend.tasks import TASK_CLASSES
from tests.cluster.tasks import DigestTask, HoldTask
from tests.server.conftest import free_port

#: The tiny roles the tests load (one family, built once before the nodes start).
ROLES = ("flux.transformer.dev", "flux.transformer.depth")
#: Seconds the cluster's first workers get to import torch and answer.
START_TIMEOUT_S = 90.0


@dataclass
class SimulatedCluster:
    cluster: Any  # ray.cluster_utils.Cluster
    gpu_nodes: list[Any]  # its nodes with a logical GPU (ray._private.node.Node)
    root: Path

    def add_gpu_node(self) -> Any:
        node = self.cluster.add_node(num_cpus=1, num_gpus=1)
        self.gpu_nodes.append(node)
        return node

    def remove_node_of(self, node_id: str) -> None:
        node = next(node for node in self.gpu_nodes if node.node_id == node_id)
        self.gpu_nodes.remove(node)
        self.cluster.remove_node(node)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatedCluster]:
    """Head (no GPU) + 2 nodes with one logical GPU, token authentication on. The nodes
    inherit this process's environment: the token, the tiny models' data dir."""
    from ray.cluster_utils import Cluster

    from poe_backend.server.ray_executor import read_auth_settings

    root = tmp_path_factory.mktemp("cluster")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "token")
        patch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        patch.setenv("POE_DATA_DIR", str(root / "models"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setitem(TASK_CLASSES, HoldTask.name, f"{HoldTask.__module__}:HoldTask")
        patch.setitem(TASK_CLASSES, DigestTask.name, f"{DigestTask.__module__}:DigestTask")
        read_auth_settings()  # Ray was imported before the token was set
        lookup.resolve(ROLES[0], "tiny")  # build the tiny family once, before any actor loads it
        simulated = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
        try:
            yield SimulatedCluster(simulated, [simulated.add_node(num_cpus=1, num_gpus=1) for _ in range(2)], root)
        finally:
            simulated.shutdown()


@dataclass
class ClusterBackend:
    url: str
    token: str
    store: Any  # JobStore
    executor: Any  # RayExecutor
    data_dir: Path
    bundles: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30.0)

    def workers_ready(self, count: int) -> list[Any]:
        """The executor's workers once ``count`` of them are attached (idle or busy)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(self.store.workers) != count:
            assert time.monotonic() < deadline, f"{len(self.store.workers)} workers attached, not {count}"
            time.sleep(0.1)
        return list(self.store.workers)


@pytest.fixture(scope="module")
def backend(cluster: SimulatedCluster) -> Iterator[ClusterBackend]:
    """``create_app`` over a JobStore with the Ray executor, served by uvicorn in a thread
    of this process (so the tests reach the store's workers), once both workers are attached."""
    import uvicorn

    from poe_backend.server.app import ServerConfig, create_app
    from poe_backend.server.jobs import JobStore
    from poe_backend.server.ray_executor import RayExecutor

    data_dir, bundles = cluster.root / "data", cluster.root / "bundles"
    bundles.mkdir()
    executor = RayExecutor(cluster.cluster.address, gpu_device="cpu", files_root=str(cluster.root / "node-files"))
    store = JobStore(data_dir, executor=executor, allowed_roots=[bundles])
    token = secrets.token_hex(16)
    app = create_app(ServerConfig(data_dir=data_dir, token=token, allowed_roots=[bundles], devices=["cpu"]), store=store)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    running = ClusterBackend(f"http://127.0.0.1:{port}", token, store, executor, data_dir, bundles)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        running.workers_ready(2)
        yield running
    finally:
        server.should_exit = True
        thread.join(timeout=60)

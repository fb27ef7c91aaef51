"""A job that runs out of memory or cannot load its model fails with advice; the worker
goes on with the next job. In-process JobStore, with two small failing tasks."""

from __future__ import annotations

import json
import time

import pytest

from poe_backend.bundle import BundleError
from poe_backend.models import lookup
from poe_backend.models.specs import MissingWeights
from poe_backend.server.errors import describe_failure
from poe_backend.server.jobs import Job, JobStore, new_job_id
from poe_backend.tasks import TASK_CLASSES
from poe_backend.tasks.base import Task, TaskContext, TaskResult
from tests.server.conftest import QUICK, write_bundle


class OutOfMemoryTask(Task):
    name = "test_oom"

    def run(self, context: TaskContext) -> TaskResult:
        raise MemoryError("tried to allocate 80 GiB")


class MissingWeightsTask(Task):
    name = "test_missing_weights"

    def run(self, context: TaskContext) -> TaskResult:
        raise MissingWeights("flux.transformer.depth", None, None, ["$POE_MODELS/flux-depth", "the Hugging Face cache"])


class TinyVaeTask(Task):
    """Resolves one role through the real lookup, as the image tasks do first."""

    name = "test_tiny_vae"

    def run(self, context: TaskContext) -> TaskResult:
        lookup.check_available(["flux.vae"], context.models)
        raise AssertionError("the weights should have been missing")


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setitem(TASK_CLASSES, "test_tiny_vae", f"{__name__}:TinyVaeTask")
    monkeypatch.setitem(TASK_CLASSES, "test_oom", f"{__name__}:OutOfMemoryTask")
    monkeypatch.setitem(TASK_CLASSES, "test_missing_weights", f"{__name__}:MissingWeightsTask")
    job_store = JobStore(tmp_path / "data")
    job_store.start()
    yield job_store
    job_store.stop()


def _submit(store: JobStore, bundle, task: str, params: dict) -> str:
    job = Job(id=new_job_id(), task=task, bundle_dir=str(bundle), params=params, models="tiny", bundle={})
    store.submit(job)
    return job.id


def _wait(store: JobStore, job_id: str) -> dict:
    deadline = time.monotonic() + 60
    while (job := store.get(job_id))["state"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return job


def test_out_of_memory_and_missing_weights_fail_the_job_not_the_worker(store, tmp_path):
    bundle = write_bundle(tmp_path / "bundle")
    oom = _submit(store, bundle, "test_oom", {})
    missing = _submit(store, bundle, "test_missing_weights", {})
    fine = _submit(store, bundle, "toy2d", QUICK)
    oom_job, missing_job = _wait(store, oom), _wait(store, missing)
    assert oom_job["state"] == "failed" and oom_job["error"]["code"] == "out_of_memory"
    assert all(name in oom_job["error"]["message"] for name in ("preset: 'preview'", "'particles'", "'levels'", "offload: 'group'"))
    assert missing_job["error"]["code"] == "missing_weights" and "$POE_MODELS/flux-depth" in missing_job["error"]["message"]
    assert _wait(store, fine)["state"] == "done"
    assert "MemoryError" in (store.job_dir(oom) / "log.txt").read_text()


def test_torch_out_of_memory_is_recognised():
    import torch

    assert describe_failure(torch.OutOfMemoryError("CUDA out of memory")).code == "out_of_memory"
    assert describe_failure(ValueError("bad")).code == "task_error"


def test_failures_are_classified_by_class_not_by_name():
    import torch

    from poe_backend.runtime.planner import PlanError

    class DeviceOutOfMemory(torch.OutOfMemoryError):
        pass

    class LocalWeightsMissing(MissingWeights):
        pass

    class SceneError(BundleError):
        pass

    assert describe_failure(DeviceOutOfMemory("CUDA out of memory")).code == "out_of_memory"
    assert describe_failure(PlanError("nothing fits")).code == "out_of_memory"
    assert describe_failure(LocalWeightsMissing("flux.vae", None, None, ["here"]), task="insertion").code == "missing_weights"
    assert describe_failure(SceneError("passes.rgb", "no such pass")).code == "invalid_bundle"

    # Unrelated classes that merely share a handled class's name are ordinary task errors.
    impostors = {name: type(name, (RuntimeError,), {}) for name in ("OutOfMemoryError", "MissingWeights", "BundleError", "ModelNotFoundError")}
    for name, cls in impostors.items():
        error = cls("looks familiar")
        error.field = "passes.rgb"
        assert describe_failure(error).code == "task_error", name


def test_missing_weights_reach_the_job_with_the_pull_command(store, tmp_path):
    preset = tmp_path / "data" / "presets" / "lean.json"
    preset.parent.mkdir(parents=True)
    preset.write_text(json.dumps({"base": "tiny", "roles": {"flux.vae": {"repo_id": "nobody/no-such-repo"}}}))
    bundle = write_bundle(tmp_path / "bundle")
    job = Job(id=new_job_id(), task="test_tiny_vae", bundle_dir=str(bundle), params={}, models=str(preset), bundle={})
    store.submit(job)
    error = _wait(store, job.id)["error"]
    assert error["code"] == "missing_weights" and error["command"] == "poe-backend models pull --task test_tiny_vae --preset lean"
    assert f"`{error['command']}`" in error["message"] and "no-such-repo" in error["message"]

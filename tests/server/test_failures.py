"""A job that runs out of memory or cannot load its model fails with advice; the worker
goes on with the next job. In-process JobStore, with two small failing tasks."""

from __future__ import annotations

import time

import pytest

from poe_backend.experts.registry import check_available
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
        check_available(["flux.transformer.depth"], context.models)  # the real lookup, in an empty cache


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setitem(TASK_CLASSES, "test_oom", f"{__name__}:OutOfMemoryTask")
    monkeypatch.setitem(TASK_CLASSES, "test_missing_weights", f"{__name__}:MissingWeightsTask")
    job_store = JobStore(tmp_path / "data")
    job_store.start()
    return job_store


def _submit(store: JobStore, bundle, task: str, params: dict, models: str = "tiny") -> str:
    job = Job(id=new_job_id(), task=task, bundle_dir=str(bundle), params=params, models=models, bundle={})
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
    missing = _submit(store, bundle, "test_missing_weights", {}, models="default")
    fine = _submit(store, bundle, "toy2d", QUICK)
    oom_job, missing_job = _wait(store, oom), _wait(store, missing)
    assert oom_job["state"] == "failed" and oom_job["error"]["code"] == "out_of_memory"
    assert "offload" in oom_job["error"]["message"] and "preview" in oom_job["error"]["message"]
    assert missing_job["error"]["code"] == "missing_weights"
    message = missing_job["error"]["message"]
    assert "`poe-backend models pull --task test_missing_weights --preset default`" in message
    assert "black-forest-labs/FLUX.1-Depth-dev" in message and "--include 'transformer/*'" in message
    assert _wait(store, fine)["state"] == "done"
    assert "MemoryError" in (store.job_dir(oom) / "log.txt").read_text()


def test_cuda_out_of_memory_is_recognised_by_name():
    class OutOfMemoryError(RuntimeError):
        pass

    assert describe_failure(OutOfMemoryError("CUDA out of memory")).code == "out_of_memory"
    assert describe_failure(ValueError("bad")).code == "task_error"


def test_out_of_memory_advice_names_parameters_that_exist():
    """Every ``params.<name>`` the advice names is a field of the image or video tasks'
    parameters, and every ``params.preset=`` value it suggests is allowed."""
    import re

    from poe_backend.server.errors import OUT_OF_MEMORY_ADVICE
    from poe_backend.tasks.images import ImageParams
    from poe_backend.tasks.sim2video import Sim2VideoParams

    named = set(re.findall(r"params\.(\w+)", OUT_OF_MEMORY_ADVICE))
    fields = set(ImageParams.model_fields) | set(Sim2VideoParams.model_fields)
    assert named and named <= fields, named - fields
    assert ImageParams(preset="preview").preset == "preview"

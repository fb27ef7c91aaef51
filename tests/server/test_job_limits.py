"""Jobs beyond the server's limits are refused at submit, with the planned cost named
(issue 22): the tasks' planned cost against their real runs, the limits' defaults against
every task's default and heavy quality settings, and the probe that used to be accepted
(insertion at 1024², 256 particles, 500 levels, 50 Langevin steps: weeks of work)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from poe_backend.bundle import Bundle, parse_bundle, read_bundle
from poe_backend.server.errors import InputError
from poe_backend.server.limits import JobLimits, check_job_cost
from poe_backend.tasks import get_task
from poe_backend.tasks.base import TaskContext
from tests.server.conftest import LONG, QUICK, assert_field, write_bundle
from tests.tasks.image_bundles import write_exr, write_png

PROBE = {"particles": 256, "levels": 500, "langevin_steps": 50}


def bundle_of(task: str, width: int, height: int, *, frames: int = 1, fps: float = 24.0, regions: int = 0, objects: int = 0) -> Bundle:
    """bundle.json only (the planned cost reads no pass file): ``frames`` frames at
    ``fps``, ``regions`` prompted boxed objects, ``objects`` masked ones (insertion)."""
    boxed = [{"name": f"r{i}", "pass_index": i + 1, "prompt": f"thing {i}", "bbox_px": [[10 * i, 0, 10 * i + 100, 100]] * frames} for i in range(regions)]
    masked = [{"name": f"m{i}", "pass_index": i + 1, "prompt": "", "bbox_px": [None] * frames} for i in range(objects)]
    passes = {
        "insertion": {"plate": "plate.png", "rgb": "rgb/####.png", "depth": "depth/####.exr", **{f"mask.m{i}": f"mask/m{i}/####.png" for i in range(objects)}},
        "sim2video": {"rgb": "rgb/####.png", "depth": "depth/####.exr"},
        "sim2video_ar": {"rgb": "rgb/####.png"},
    }.get(task, {})
    data = {"schema": "poe-bundle/1", "task": task, "prompt": "a scene", "seed": 1, "width": width, "height": height, "fps": fps, "frames": list(range(1, frames + 1)),
            "passes": passes, "objects": boxed + masked}
    return parse_bundle(data, Path("/nonexistent"), check_files=False)


def check(task_name: str, bundle: Bundle, params: dict[str, Any], limits: JobLimits | None = None):
    """``check_job_cost`` of ``task_name`` with ``params`` (the default limits unless given)."""
    task = get_task(task_name)
    return check_job_cost(task, bundle, task.Params(**params), limits or JobLimits())


IMAGE = bundle_of("insertion", 1024, 1024, objects=1)
VIDEO = {"sim2video": bundle_of("sim2video", 1920, 1080, frames=121), "sim2video_ar": bundle_of("sim2video_ar", 1920, 1080, frames=121)}
#: Every task's default and preview, and the heaviest settings its docstring measures or
#: the paper runs (conditional experts, many particles, more levels and steps).
SETTINGS = [
    ("insertion", IMAGE, {}),
    ("insertion", IMAGE, {"preset": "preview"}),
    ("insertion", IMAGE, {"method": "rf_solver"}),
    ("insertion", IMAGE, {"particles": 4, "levels": 100, "langevin_steps": 2, "cond_weight": 0.1}),
    ("regional_t2i", bundle_of("regional_t2i", 1024, 1024, regions=2), {}),
    ("regional_t2i", bundle_of("regional_t2i", 1024, 1024, regions=2), {"preset": "preview"}),
    ("regional_t2i", bundle_of("regional_t2i", 1024, 1024, regions=4), {"particles": 32, "cond_weight": 0.1}),
    ("regional_t2i", bundle_of("regional_t2i", 1024, 1024), {"particles": 32, "layout_parser": True}),
    ("sim2video", VIDEO["sim2video"], {}),
    ("sim2video", VIDEO["sim2video"], {"preset": "preview"}),
    ("sim2video", VIDEO["sim2video"], {"cond_weight": 0.5, "levels": 50, "langevin_steps": 2, "particles": 4}),
    ("sim2video_ar", VIDEO["sim2video_ar"], {}),
    ("sim2video_ar", VIDEO["sim2video_ar"], {"preset": "preview"}),
    ("sim2video_ar", VIDEO["sim2video_ar"], {"particles": 8, "levels": 100, "langevin_steps": 4, "gibbs_sweeps": 1}),
    ("toy2d", bundle_of("toy2d", 64, 48), {}),
    ("toy2d", bundle_of("toy2d", 64, 48), LONG),
]


@pytest.mark.parametrize(("task", "bundle", "params"), SETTINGS, ids=[f"{task}-{json.dumps(params)}" for task, _, params in SETTINGS])
def test_default_and_heavy_quality_settings_pass_a_quarter_of_every_limit(task: str, bundle: Bundle, params: dict[str, Any]) -> None:
    quarter = JobLimits(**{name: value // 4 for name, value in asdict(JobLimits()).items()})
    check(task, bundle, params, quarter)


def test_the_probe_is_refused_naming_particles_and_its_cost() -> None:
    """1024² and 4096² alike: the token-forwards are the limit exceeded most, and without
    its 256 particles the job would plan 256 times less."""
    for side in (1024, 4096):
        with pytest.raises(InputError) as refused:
            check("insertion", bundle_of("insertion", side, side, objects=1), {**PROBE, "max_side": side})
        error = refused.value
        assert (error.status, error.code, error.field) == (422, "job_too_large", "params.particles")
        tokens = (side // 16) ** 2
        for shown in ("50,804 forwards", "256 particles", f"{tokens:,} tokens", f"({side}x{side})", f"{50_804 * 256 * tokens:,} token-forwards", "limit of 1,000,000,000",
                      "--max-token-forwards", f"at its default (1) the job would plan {50_804 * tokens:,}"):
            assert shown in error.message, (shown, error.message)


@pytest.mark.parametrize(("task", "bundle", "params", "limits", "field", "option"), [
    ("insertion", bundle_of("insertion", 48, 32, objects=1), PROBE, JobLimits(), "params.langevin_steps", "--max-forwards"),
    ("insertion", IMAGE, {"max_side": 1024}, JobLimits(max_pixels=512 * 512), "params", "--max-pixels"),
    ("insertion", bundle_of("insertion", 4096, 4096, objects=1), {"max_side": 2048}, JobLimits(max_pixels=1024 * 1024), "params.max_side", "--max-pixels"),
    ("sim2video", bundle_of("sim2video", 1920, 1080, frames=241, fps=16), {"max_side": 1280, "max_frames": 241, "particles": 64}, JobLimits(), "params.particles", "--max-total-pixels"),
    ("toy2d", bundle_of("toy2d", 64, 48), {"particles": 100_000, "levels": 10_000, "langevin_steps": 100}, JobLimits(), "params.particles", "--max-token-forwards"),
])
def test_each_limit_names_its_option_and_the_field_most_responsible(task, bundle, params, limits, field, option) -> None:
    """The field is the parameter whose default lowers the cost most ("params" when none
    the caller set does: a 1024² bundle at the default max_side)."""
    with pytest.raises(InputError) as refused:
        check(task, bundle, params, limits)
    assert (refused.value.field, refused.value.code) == (field, "job_too_large") and option in refused.value.message


def test_a_bundle_the_run_would_refuse_is_refused_at_submit() -> None:
    """Five sections of 9 latent frames need 181 frames; the bundle has 9: the run's own
    error, now at submit."""
    with pytest.raises(InputError) as refused:
        check("sim2video_ar", bundle_of("sim2video_ar", 64, 48, frames=9, fps=30), {"num_sections": 5})
    assert (refused.value.status, refused.value.code, refused.value.field) == (400, "invalid_bundle", "frames") and "181 model frames" in refused.value.message


@pytest.mark.parametrize("params", [{}, {"sampler": "fkc", "score_only": True}, {"sampler": "langevin"}, {"sampler": "naive"}, {"sampler": "single:1"},
                                    {"sampler": "autoregressive", "spec": {"experts": [{"type": "gmm", "weights": [1.0], "means": [[0.0, 0.0]], "covs": [[[1.0, 0.0], [0.0, 1.0]]]}] * 2}}])
def test_toy2d_plans_the_evaluations_its_run_reports(tmp_path: Path, params: dict[str, Any]) -> None:
    task, bundle = get_task("toy2d"), read_bundle(write_bundle(tmp_path / "bundle"))
    job_params = task.Params(**{**QUICK, "levels": 7, "langevin_steps": 2, **params})
    reports = []
    stats = task.run(TaskContext(bundle=bundle, params=job_params, out_dir=tmp_path, callback=reports.append)).manifest["stats"]
    cost = task.planned_cost(bundle, job_params)
    assert (cost.nfe, cost.forwards, cost.particles) == (stats["nfe_per_particle"], stats["forwards"], 32) and cost.nfe > 0
    assert not reports or reports[-1].forwards == 0  # closed-form experts: no network forward


def write_insertion_files(root: Path, side: int) -> Path:
    """A real insertion bundle of ``side``² pixels: flat plate and render, a far wall with a
    near box as depth, the box as the mask."""
    flat = np.full((side, side, 3), 90, dtype=np.uint8)
    depth = np.full((side, side), 5.0, dtype=np.float32)
    depth[side // 4: side // 2, side // 4: side // 2] = 2.0
    mask = np.zeros((side, side), dtype=np.uint8)
    mask[side // 4: side // 2, side // 4: side // 2] = 255
    write_png(root / "plate.png", flat)
    write_png(root / "rgb" / "0001.png", flat)
    write_exr(root / "depth" / "0001.exr", depth)
    write_png(root / "mask" / "box" / "0001.png", mask)
    passes = {"plate": "plate.png", "rgb": "rgb/####.png", "depth": "depth/####.exr", "mask.box": "mask/box/####.png"}
    objects = [{"name": "box", "pass_index": 1, "prompt": "a box", "bbox_px": [[side // 4, side // 4, side // 2, side // 2]]}]
    return write_bundle(root, task="insertion", width=side, height=side, passes=passes, objects=objects, params={})


def test_the_server_refuses_the_probe_at_submit(backend) -> None:
    """Through ``POST /v1/jobs``: the probe gets a 422 naming params.particles and no job is
    made; the task's defaults on the same bundle are queued."""
    bundle = write_insertion_files(backend.data_dir.parent / "bundles" / "probe", 1024)
    with backend.client() as client:
        before = client.get("/v1/jobs").json()["total"]
        response = client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": PROBE})
        error = assert_field(response, 422, "params.particles")
        assert error["code"] == "job_too_large" and "--max-token-forwards" in error["message"]
        assert client.get("/v1/jobs").json()["total"] == before
        accepted = client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": {"levels": 2}})
        assert accepted.status_code == 201, accepted.text
        client.post(f"/v1/jobs/{accepted.json()['id']}/cancel")

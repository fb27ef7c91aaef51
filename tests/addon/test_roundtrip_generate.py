"""Generate end to end: capture the insertion example with Cycles, submit it to a real
backend running the tiny model preset, tick the tracker until the job is done and find the
result in the scene as an image plane with its provenance; and the same captured bundle
through the RF-Solver baseline (``method="rf_solver"``), whose source image is the
capture's RGB render with the object."""

from __future__ import annotations

import json
import time
import types

import numpy as np
import pytest
from PIL import Image

bpy = pytest.importorskip("bpy")

import addon  # noqa: E402
from addon import operators, operators_jobs  # noqa: E402
from poe_backend.bundle import read_bundle  # noqa: E402
from tests.server.conftest import start_backend  # noqa: E402

pytestmark = [pytest.mark.blender, pytest.mark.slow]


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("tiny-backend")
    (root / "data").mkdir()
    running = start_backend(root / "data", "--models", "tiny")
    yield running
    running.stop()


@pytest.fixture
def insertion_scene(backend, tmp_path, monkeypatch):
    """The insertion example (a can on a table) at 64x48, 1 Cycles sample, with the
    add-on registered, the Can as the object to insert and the preview preset."""
    from blend_examples import insertion_table

    blend = insertion_table.build(tmp_path / "insertion.blend")
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    scene = bpy.context.scene
    scene.render.engine, scene.cycles.samples, scene.cycles.device = "CYCLES", 1, "CPU"
    scene.cycles.use_denoising = False
    scene.render.resolution_x, scene.render.resolution_y = 64, 48
    preferences = types.SimpleNamespace(backend_url=backend.url, token=backend.token, backend_command="", output_dir=str(tmp_path / "poe"))
    monkeypatch.setattr(addon.preferences, "prefs", lambda context=None: preferences)
    monkeypatch.setattr(operators_jobs, "SESSION", operators_jobs.Session())
    registered = [cls for cls in addon.CLASSES if not getattr(cls, "is_registered", False)]
    for cls in registered:
        bpy.utils.register_class(cls)
    bpy.types.Scene.poe = bpy.props.PointerProperty(type=addon.properties.POE_SceneSettings)
    try:
        poe = bpy.context.scene.poe
        poe.task, poe.preset = "insertion", "preview"
        item = poe.objects.add()
        item.object = bpy.data.objects["Can"]
        yield bpy.context.scene
    finally:
        del bpy.types.Scene.poe
        for cls in reversed(registered):
            bpy.utils.unregister_class(cls)


def _wait(tracker, job, timeout: float = 300.0) -> None:
    tracker.wait(timeout=timeout, sleep=lambda seconds: None if job.finished else time.sleep(seconds))


def test_generate_captures_the_scene_and_submits_it(insertion_scene, tmp_path):
    scene = insertion_scene
    assert bpy.ops.poe.generate() == {"FINISHED"}
    bundle_json = scene.poe.last_bundle
    assert bundle_json and (tmp_path / "poe").is_dir()
    bundle = read_bundle(bundle_json.rsplit("/", 1)[0])
    assert bundle.task == "insertion" and "plate" in bundle.passes and bundle.width == 64
    tracker = operators_jobs.SESSION.tracker
    (job,) = tracker.jobs.values()
    assert job.task == "insertion"
    _wait(tracker, job)
    assert job.state == "done" and job.loaded, job.message
    planes = [obj for obj in scene.objects if obj.get("poe_job_id") == job.job_id]
    assert len(planes) == 1 and planes[0].get("poe_task") == "insertion"


def test_a_captured_insertion_bundle_runs_the_rf_solver_baseline(insertion_scene, tmp_path):
    scene = insertion_scene
    bundle_dir = operators.capture_scene(bpy.context, tmp_path / "poe").parent
    bundle = read_bundle(bundle_dir)
    assert {"plate", "rgb", "depth", "mask.Can"} <= set(bundle.passes)  # rgb: RF-Solver's source
    tracker = operators_jobs.SESSION.tracker_for(addon.preferences.backend_settings())
    job = tracker.submit(bundle_dir, params={"method": "rf_solver", "levels": 3, "max_sequence_length": 16}, scene=scene.name)
    _wait(tracker, job)
    assert job.state == "done" and job.loaded, job.message
    manifest = job.result.manifest
    assert manifest["params"]["method"] == "rf_solver" and "rf-solver inversion + edit" in manifest["sampler_stats"]["path"]
    assert manifest["sampler_stats"]["nfe_per_particle"] > 0
    image = np.asarray(Image.open(job.result.primary).convert("RGB"))
    plate = np.asarray(Image.open(bundle.pass_path("plate", bundle.frames[0])).convert("RGB"))
    mask = np.asarray(Image.open(bundle.pass_path("mask.Can", bundle.frames[0])).convert("L")) >= 128
    assert image.shape == (48, 64, 3) and mask.any() and not mask.all()
    assert np.array_equal(image[~mask], plate[~mask])  # blended: the plate is kept outside the can
    raw = np.asarray(Image.open(job.result.outputs["raw"]).convert("RGB"))
    assert not np.array_equal(raw[mask], plate[mask])  # inside, the edit's own pixels
    planes = [obj for obj in scene.objects if obj.get("poe_job_id") == job.job_id]
    assert len(planes) == 1 and json.loads(planes[0]["poe_params"])["method"] == "rf_solver"

"""Generate end to end: capture the insertion example with Cycles, submit it to a real
backend running the tiny model preset, tick the tracker until the job is done and find the
result in the scene as an image plane with its provenance."""

from __future__ import annotations

import types

import pytest

bpy = pytest.importorskip("bpy")

import addon  # noqa: E402
from addon import operators_jobs  # noqa: E402
from tests.server.conftest import start_backend  # noqa: E402

pytestmark = [pytest.mark.blender, pytest.mark.slow]


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("tiny-backend")
    (root / "data").mkdir()
    running = start_backend(root / "data", "--models", "tiny")
    yield running
    running.stop()


def test_generate_captures_the_scene_and_submits_it(backend, tmp_path, monkeypatch):
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
        assert bpy.ops.poe.generate() == {"FINISHED"}
        bundle_json = poe.last_bundle
        assert bundle_json and (tmp_path / "poe").is_dir()
        from poe_backend.bundle import read_bundle

        bundle = read_bundle(bundle_json.rsplit("/", 1)[0])
        assert bundle.task == "insertion" and "plate" in bundle.passes and bundle.width == 64
        tracker = operators_jobs.SESSION.tracker
        (job,) = tracker.jobs.values()
        assert job.task == "insertion"
        tracker.wait(timeout=300, sleep=lambda seconds: None if job.finished else __import__("time").sleep(seconds))
        assert job.state == "done" and job.loaded, job.message
        planes = [obj for obj in scene.objects if obj.get("poe_job_id") == job.job_id]
        assert len(planes) == 1 and planes[0].get("poe_task") == "insertion"
    finally:
        del bpy.types.Scene.poe
        for cls in reversed(registered):
            bpy.utils.unregister_class(cls)

"""Generate with the real capture (needs the capture branch's addon.capture and scene
settings): capture the insertion example and submit it to the real backend."""

from __future__ import annotations

import types

import pytest

bpy = pytest.importorskip("bpy")
pytest.importorskip("addon.capture", reason="needs the capture branch (addon.capture)")

import addon  # noqa: E402
from addon import operators_jobs  # noqa: E402
from tests.addon.roundtrip_fixtures import backend  # noqa: E402,F401 - fixture

pytestmark = pytest.mark.blender


def test_generate_captures_the_scene_and_submits_it(backend, tmp_path, monkeypatch):
    from blend_examples import insertion_table

    blend = insertion_table.build(tmp_path / "insertion.blend")
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    scene = bpy.context.scene
    scene.render.engine, scene.cycles.samples, scene.cycles.device = "CYCLES", 1, "CPU"
    scene.cycles.use_denoising = False
    scene.render.resolution_x, scene.render.resolution_y = 64, 48
    preferences = types.SimpleNamespace(backend_url=backend.url, token=backend.token, backend_command="", output_dir=str(tmp_path / "poe"))
    monkeypatch.setattr(addon, "prefs", lambda context=None: preferences)
    monkeypatch.setattr(operators_jobs, "SESSION", operators_jobs.Session())
    registered = [cls for cls in (*addon.CLASSES, *operators_jobs.CLASSES) if not getattr(cls, "is_registered", False)]
    for cls in registered:
        bpy.utils.register_class(cls)
    bpy.types.Scene.poe = bpy.props.PointerProperty(type=addon.properties.POE_SceneSettings)
    try:
        poe = bpy.context.scene.poe
        poe.task, poe.preset = "insertion", "preview"
        item = poe.objects.add()
        item.object = bpy.data.objects["Can"]
        try:
            result = bpy.ops.poe.generate()
            accepted = result == {"FINISHED"}
        except RuntimeError as error:  # until the insertion task is registered on the backend
            assert "task" in str(error) and "insertion" in str(error), error
            accepted = False
        bundle_json = poe.last_bundle
        assert bundle_json and (tmp_path / "poe").is_dir()
        from poe_backend.bundle import read_bundle

        bundle = read_bundle(bundle_json.rsplit("/", 1)[0])
        assert bundle.task == "insertion" and "plate" in bundle.passes and bundle.width == 64
        if accepted:
            assert list(operators_jobs.SESSION.tracker.jobs.values())[0].task == "insertion"
    finally:
        del bpy.types.Scene.poe
        for cls in reversed(registered):
            bpy.utils.unregister_class(cls)

"""Registration, scene properties, the capture operator and the panel's button list."""

from __future__ import annotations

import pytest

import bpy

import addon
from addon import panel, properties

pytestmark = pytest.mark.blender


@pytest.fixture
def registered(plane_and_cube):
    addon.register()
    yield plane_and_cube
    addon.unregister()


def test_one_prefix_and_one_class_list(registered):
    for cls in addon.CLASSES:
        idname = getattr(cls, "bl_idname", "")
        assert cls.__name__.startswith("POE_")
        if "_OT_" in cls.__name__:
            assert idname.startswith("poe.")
    assert panel.operator_registered("poe.capture")
    assert not panel.operator_registered("poe.generate")  # drawn once another module registers it


def test_settings_are_scene_properties_saved_in_the_blend(registered, tmp_path):
    settings = registered.poe
    settings.task, settings.preset, settings.prompt = "regional_t2i", "preview", "a table"
    item = settings.objects.add()
    item.object, item.prompt = registered.objects["Cube"], "a wooden crate"
    settings.seed, settings.particles, settings.steps = 5, 8, 12
    path = tmp_path / "saved.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    bpy.ops.wm.open_mainfile(filepath=str(path))
    settings = bpy.context.scene.poe
    assert (settings.task, settings.preset, settings.prompt) == ("regional_t2i", "preview", "a table")
    assert settings.objects[0].object.name == "Cube" and settings.objects[0].prompt == "a wooden crate"
    assert (settings.seed, settings.particles, settings.steps) == (5, 8, 12)
    assert [item[0] for item in properties.TASK_ITEMS] == ["insertion", "sim2video", "sim2video_ar", "regional_t2i"]


def test_capture_operator_writes_a_bundle(registered, tmp_path, monkeypatch):
    from addon import operators
    monkeypatch.setattr(operators, "output_root", lambda context: tmp_path)
    settings = registered.poe
    settings.task, settings.preset, settings.prompt = "regional_t2i", "preview", "two things"
    for name, prompt in (("Cube", "a crate"), ("Plane", "a poster")):
        item = settings.objects.add()
        item.object, item.prompt = registered.objects[name], prompt
    assert bpy.ops.poe.capture() == {"FINISHED"}
    from addon.bundle_schema import read_bundle
    bundle = read_bundle(bpy.path.abspath(settings.last_bundle).rsplit("/", 1)[0])
    assert [(obj.name, obj.prompt) for obj in bundle.objects] == [("Cube", "a crate"), ("Plane", "a poster")]
    assert bundle.params["preset"] == "preview" and bundle.params["particles"] == 4


def test_capture_operator_reports_errors(registered, tmp_path, monkeypatch):
    from addon import operators
    monkeypatch.setattr(operators, "output_root", lambda context: tmp_path)
    registered.poe.task = "insertion"  # no object chosen
    with pytest.raises(RuntimeError, match="needs the object to insert"):
        bpy.ops.poe.capture()

"""Registration, scene properties, the capture operator and the panel's button list."""

from __future__ import annotations

import pytest

import bpy

import addon
from addon import panel, preferences, properties

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
    for idname, _ in panel.ACTIONS:
        prefix, name = idname.split(".")
        assert hasattr(getattr(bpy.ops, prefix), name), idname


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
    monkeypatch.setattr(preferences, "output_root", lambda configured: tmp_path)
    settings = registered.poe
    settings.task, settings.preset, settings.prompt = "regional_t2i", "preview", "two things"
    for name, prompt in (("Cube", "a crate"), ("Plane", "a poster")):
        item = settings.objects.add()
        item.object, item.prompt = registered.objects[name], prompt
    assert bpy.ops.poe.capture() == {"FINISHED"}
    from addon.bundle_schema import read_bundle
    bundle = read_bundle(bpy.path.abspath(settings.last_bundle).rsplit("/", 1)[0])
    assert [(obj.name, obj.prompt) for obj in bundle.objects] == [("Cube", "a crate"), ("Plane", "a poster")]
    assert bundle.params == {"preset": "preview"}  # the task's preview values fill levels and particles
    settings.preset = "final"
    assert properties.backend_params(settings) == {"preset": "quality"}  # the task's defaults
    settings.particles, settings.steps = 4, 28
    assert properties.backend_params(settings) == {"preset": "quality", "particles": 4, "levels": 28}


def test_capture_operator_reports_errors(registered, tmp_path, monkeypatch):
    monkeypatch.setattr(preferences, "output_root", lambda configured: tmp_path)
    registered.poe.task = "insertion"  # no object chosen
    with pytest.raises(RuntimeError, match="needs the object to insert"):
        bpy.ops.poe.capture()


class RecordingLayout:
    """Stands in for ``UILayout`` headless: checks every drawn property and operator exists."""

    def __init__(self, drawn: list):
        self.drawn = drawn

    def prop(self, data, name, **kwargs):
        assert name in data.bl_rna.properties, name
        self.drawn.append(name)

    def operator(self, idname, **kwargs):
        prefix, name = idname.split(".")
        assert hasattr(getattr(bpy.ops, prefix), name), idname
        self.drawn.append(idname)

    def template_list(self, list_type, list_id, data, name, active_data, active_name, **kwargs):
        assert hasattr(bpy.types, list_type) and name in data.bl_rna.properties and active_name in active_data.bl_rna.properties
        self.drawn.append(name)

    def label(self, **kwargs):
        pass

    def row(self, **kwargs):
        return self

    column = row


def test_panel_draws_every_setting_and_every_button(registered):
    drawn = []
    stub = type("PanelStub", (), {"layout": RecordingLayout(drawn), "_draw_frames_and_resolution": staticmethod(panel.POE_PT_main._draw_frames_and_resolution)})()
    context = type("ContextStub", (), {"scene": registered})()
    registered.poe.use_scene_range = registered.poe.use_scene_resolution = False
    panel.POE_PT_main.draw(stub, context)
    for name in ("task", "preset", "prompt", "objects", "frame_start", "frame_end", "resolution_x", "seed", "particles", "steps", "poe.capture", "poe.generate", "poe.cancel", "poe.start_backend"):
        assert name in drawn


class _RecordingLayout:
    """Stands in for ``UILayout`` while the real panel draws with the real scene: every call
    returns another recorder, ``label`` texts are kept."""

    def __init__(self, labels):
        self.labels = labels

    def label(self, text="", **_):
        self.labels.append(text)

    def __getattr__(self, name):
        return lambda *args, **kwargs: _RecordingLayout(self.labels)


def test_panel_shows_the_capped_video_size(registered):
    scene, settings = registered, registered.poe
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 1920, 1080, 100
    scene.frame_start, scene.frame_end = 1, 250
    settings.task = "sim2video"
    labels = []
    stub = type("Panel", (), {"layout": _RecordingLayout(labels), "_draw_frames_and_resolution": staticmethod(panel.POE_PT_main._draw_frames_and_resolution)})()
    panel.POE_PT_main.draw(stub, bpy.context)
    assert "Will generate: 832x464, 81 frames at 24 fps" in labels, labels
    settings.task = "insertion"
    labels.clear()
    panel.POE_PT_main.draw(stub, bpy.context)
    assert not any("81 frames" in text for text in labels), labels

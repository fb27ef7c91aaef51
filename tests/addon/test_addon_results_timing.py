"""addon/results.py with real bpy (4.2, 4.5 and 5.0): a video made at the model's rate plays
over the same seconds of the scene as the simulation it came from, not stretched, not cut.

The test movies are written by Blender itself (its sequencer renders colour strips to
H.264), so the test needs nothing but bpy: media frame ``k`` of ``count`` is a flat grey
of sRGB value ``k / (count - 1)``, read back from a sequencer render of the scene."""

from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np
import pytest

from addon import results
from addon.jobs import JobResult

pytestmark = pytest.mark.blender


def _srgb_to_linear(value: float) -> float:
    return value / 12.92 if value <= 0.04045 else ((value + 0.055) / 1.055) ** 2.4


def _linear_to_srgb(value: float) -> float:
    return value * 12.92 if value <= 0.0031308 else 1.055 * value ** (1 / 2.4) - 0.055


def _scene(fps: int):
    """A factory-empty scene at ``fps``, 32x16 pixels, plain sRGB view, with a sequencer."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 32, 16, 100
    scene.render.fps, scene.render.fps_base = fps, 1.0
    scene.view_settings.view_transform = "Standard"
    scene.sequence_editor_create()
    return scene


def _editor_strips(scene):
    editor = scene.sequence_editor
    return editor.strips if hasattr(editor, "strips") else editor.sequences


def _write_movie(path: Path, count: int, fps: int) -> Path:
    """``count`` frames at ``fps`` (H.264 MP4): frame k a grey of sRGB value k/(count-1)."""
    scene = _scene(fps)
    strips = _editor_strips(scene)
    one_frame = (lambda start: {"length": 1}) if "length" in strips.bl_rna.functions["new_effect"].parameters else (lambda start: {"frame_end": start + 1})
    for index in range(count):
        strips.new_effect(name=f"frame {index}", type="COLOR", channel=1, frame_start=index + 1, **one_frame(index + 1)).color = (_srgb_to_linear(index / (count - 1)),) * 3
    settings = scene.render.image_settings
    if hasattr(settings, "media_type"):  # 5.0
        settings.media_type = "VIDEO"
    settings.file_format = "FFMPEG"
    scene.render.ffmpeg.format, scene.render.ffmpeg.codec = "MPEG4", "H264"
    scene.frame_start, scene.frame_end = 1, count
    scene.render.filepath = str(path)
    bpy.ops.render.render(animation=True)
    assert path.is_file()
    return path


def _media_frame_shown(scene, frame: int, count: int, tmp_path: Path) -> int | None:
    """Which media frame the sequencer shows on scene ``frame`` (None: nothing, black)."""
    scene.frame_set(frame)
    settings = scene.render.image_settings
    if hasattr(settings, "media_type"):
        settings.media_type = "IMAGE"
    settings.file_format = "PNG"
    scene.render.filepath = str(tmp_path / "shown.png")
    bpy.ops.render.render(write_still=True)
    image = bpy.data.images.load(scene.render.filepath, check_existing=False)
    linear = float(np.asarray(image.pixels[:]).reshape(-1, 4)[:, 0].mean())
    alpha = float(np.asarray(image.pixels[:]).reshape(-1, 4)[:, 3].mean())
    bpy.data.images.remove(image)
    return None if alpha < 0.5 else round(_linear_to_srgb(linear) * (count - 1))


def _result(path: Path, frames: list[int], fps: float, scene_fps: float) -> JobResult:
    job = {"id": "timed", "task": "sim2video", "params": {"seed": 7}, "models": "tiny", "bundle": {"prompt": "a ball falls", "seed": 1, "frames": frames, "fps": scene_fps}}
    manifest = {"task": "sim2video", "frames": frames, "size": {"fps": fps, "scene_fps": scene_fps}}
    return JobResult("timed", "video", path, {"video": path}, manifest, job)


def test_a_16_fps_clip_spans_the_two_seconds_of_a_24_fps_simulation(tmp_path):
    """33 frames at 16 fps from a simulation baked on frames 10..58 at 24 fps: media frame k
    on scene frame 10 + 1.5k, the last on 58 (2 s after the first), nothing after it."""
    movie = _write_movie(tmp_path / "video.mp4", 33, 16)
    scene = _scene(24)
    speed, source = results.load_result(scene, _result(movie, list(range(10, 59)), 16.0, 24.0))
    assert speed.type == "SPEED" and source.type == "MOVIE" and source.mute and speed.channel == source.channel + 1
    assert (speed.frame_final_start, speed.frame_final_end) == (10, 59)  # frames 10..58, the simulation's
    assert speed["poe_job_id"] == source["poe_job_id"] == "timed"
    shown = {frame: _media_frame_shown(scene, frame, 33, tmp_path) for frame in (10, 13, 34, 58, 59)}
    assert shown == {10: 0, 13: 2, 34: 16, 58: 32, 59: None}
    channels = [speed.channel, source.channel]
    again = results.load_result(scene, _result(movie, list(range(10, 59)), 16.0, 24.0))  # replaces both
    assert len(_editor_strips(scene)) == 2 and [strip.channel for strip in again] == channels


def test_a_30_fps_clip_in_a_24_fps_scene_is_not_stretched(tmp_path):
    """FramePack's 37 frames at 30 fps last 1.2 s: 29 scene frames at 24 fps (frames
    1..29), media frame 25 (5/6 s) on scene frame 21."""
    movie = _write_movie(tmp_path / "video.mp4", 37, 30)
    scene = _scene(24)
    speed, _ = results.load_result(scene, _result(movie, list(range(1, 30)), 30.0, 24.0))
    assert (speed.frame_final_start, speed.frame_final_end) == (1, 30)
    assert _media_frame_shown(scene, 21, 37, tmp_path) == 25


def test_a_clip_at_the_scene_rate_is_one_plain_strip(tmp_path):
    movie = _write_movie(tmp_path / "video.mp4", 9, 16)
    scene = _scene(16)
    (strip,) = results.load_result(scene, _result(movie, list(range(1, 10)), 16.0, 16.0))
    assert strip.type == "MOVIE" and not strip.mute and (strip.frame_final_start, strip.frame_final_end) == (1, 10)
    assert _media_frame_shown(scene, 5, 9, tmp_path) == 4


@pytest.mark.parametrize("media_frames, media_fps, scene_fps, duration", [(33, 16, 24, 49), (81, 16, 24, 121), (37, 30, 24, 29), (61, 30, 24, 49), (5, 16, 16, 5)])
def test_scene_duration(media_frames, media_fps, scene_fps, duration):
    assert results.scene_duration(media_frames, media_fps, scene_fps) == duration


def test_an_image_sequence_takes_its_rate_from_the_result(tmp_path):
    """Numbered images have no rate of their own: result.json's ``size.fps`` (16) gives it,
    so 4 frames in a 24 fps scene span 0.1875 s = 4.5 frames from frame 5: frames 5..9."""
    outputs = {}
    for index in range(4):
        image = bpy.data.images.new(f"frame {index}", 8, 8)
        image.filepath_raw, image.file_format = str(tmp_path / f"frame_{index:04d}.png"), "PNG"
        image.save()
        outputs[f"frame_{index:04d}"] = tmp_path / f"frame_{index:04d}.png"
    scene = _scene(24)
    result = JobResult("seq", "video", outputs["frame_0000"], outputs, {"size": {"fps": 16.0, "scene_fps": 24.0}}, {"task": "sim2video", "bundle": {"frames": [5, 6, 7, 8, 9]}})
    speed, source = results.load_result(scene, result)
    assert source.type == "IMAGE" and source.mute and len(source.elements) == 4
    assert (speed.frame_final_start, speed.frame_final_end, speed.speed_factor) == (5, 10, pytest.approx(16 / 24))

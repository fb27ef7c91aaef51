"""addon/results.py with real bpy: videos become VSE strips at the captured frame range,
image sequences likewise, with provenance; loading again replaces."""

from __future__ import annotations

from pathlib import Path

import bpy
import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image

from addon import results
from addon.jobs import JobResult

pytestmark = pytest.mark.blender


def _scene():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


def _result(job_id: str, primary: Path, outputs: dict[str, Path], frames: list[int]) -> JobResult:
    job = {"id": job_id, "task": "sim2video", "params": {"seed": 7, "steps": 4}, "models": "tiny", "bundle": {"prompt": "a ball falls", "seed": 1, "frames": frames}}
    return JobResult(job_id, "video", primary, outputs, {"task": "sim2video"}, job)


def _strips(scene):
    editor = scene.sequence_editor
    return list(editor.strips_all if hasattr(editor, "strips_all") else editor.sequences_all)


def test_a_video_becomes_a_movie_strip_at_the_captured_frames(tmp_path):
    scene = _scene()
    path = tmp_path / "video.mp4"
    with imageio.get_writer(path, fps=24) as writer:
        for index in range(6):
            writer.append_data(np.full((48, 64, 3), index * 40, np.uint8))
    result = _result("vid-1", path, {"video": path}, frames=list(range(20, 26)))
    (strip,) = results.load_result(scene, result)
    assert strip.type == "MOVIE" and strip.frame_start == 20 and strip.frame_final_duration == 6
    assert strip["poe_job_id"] == "vid-1" and strip["poe_prompt"] == "a ball falls" and strip["poe_seed"] == 7 and strip["poe_models"] == "tiny"
    channel = strip.channel
    (again,) = results.load_result(scene, result)
    assert len(_strips(scene)) == 1 and again.channel == channel
    other = _result("vid-2", path, {"video": path}, frames=[1])
    assert results.load_result(scene, other)[0].channel == channel + 1


def test_an_image_sequence_becomes_an_image_strip(tmp_path):
    scene = _scene()
    outputs = {}
    for index in range(4):
        outputs[f"frame_{index:04d}"] = path = tmp_path / f"frame_{index:04d}.png"
        Image.new("RGB", (64, 48), (index * 60, 0, 0)).save(path)
    result = _result("seq-1", outputs["frame_0000"], outputs, frames=[5, 6, 7, 8])
    (strip,) = results.load_result(scene, result)
    assert strip.type == "IMAGE" and strip.frame_start == 5 and strip.frame_final_duration == 4
    assert [element.filename for element in strip.elements] == [f"frame_{index:04d}.png" for index in range(4)]
    results.load_result(scene, result)
    assert len(_strips(scene)) == 1


def test_a_points_result_without_an_image_is_refused(tmp_path):
    scene = _scene()
    path = tmp_path / "samples.npy"
    np.save(path, np.zeros((4, 2)))
    result = JobResult("pts", "points", path, {"samples": path}, {}, {"task": "toy2d", "bundle": {}})
    with pytest.raises(ValueError, match="nothing to show"):
        results.load_result(scene, result)


def test_an_image_result_blender_cannot_read_is_refused_and_the_old_image_kept(tmp_path):
    """A result named .png that is not an image would load as a 0×0 image and report
    success; it is refused, and the job's previously loaded image stays."""
    _scene()
    good = tmp_path / "good.png"
    Image.fromarray(np.full((4, 6, 3), 200, dtype=np.uint8)).save(good)
    props = {"poe_job_id": "img1", "poe_task": "insertion"}
    results.load_image(good, props)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="not an image"):
        results.load_image(bad, props)
    assert [tuple(image.size) for image in bpy.data.images if image.get("poe_job_id") == "img1"] == [(6, 4)]

"""The video tasks' frame-rate rule (:func:`poe_backend.bundle.frames_at_rate`,
:class:`poe_backend.tasks.video_io.ClipTiming`) and the files they write."""

from __future__ import annotations

import json

import imageio.v3 as iio
import pytest
import torch

from poe_backend.bundle import BundleError, frames_at_rate, read_bundle
from poe_backend.tasks import video_io
from tests.video_support import write_video_bundle


def test_24_fps_to_wan_16_fps_keeps_the_seconds() -> None:
    """2 s at 24 fps (frames 1..49) -> 33 frames at 16 fps; frame k is at k/16 s = 1.5k
    scene frames: even k exact, odd k halfway, taking the later frame (+1/48 s)."""
    frames = frames_at_rate(list(range(1, 50)), 24, 16)
    assert len(frames) == 33 and frames[0] == 1 and frames[-1] == 49
    assert frames[:7] == [1, 3, 4, 6, 7, 9, 10]
    timing = video_io.ClipTiming(16, 24, frames)
    assert timing.times[-1] == timing.scene_times[-1] == 2.0
    assert timing.max_error == pytest.approx(1 / 48)


def test_24_fps_to_framepack_30_fps_repeats_every_fourth_frame() -> None:
    frames = frames_at_rate(list(range(1, 50)), 24, 30)
    assert len(frames) == 61 and frames[-1] == 49  # 2 s at 30 fps
    assert frames[:10] == [1, 2, 3, 3, 4, 5, 6, 7, 7, 8]
    assert video_io.ClipTiming(30, 24, frames).max_error == pytest.approx(1 / 60)


@pytest.mark.parametrize("scene_fps, model_fps", [(16, 16), (48, 16), (30, 30), (60, 30), (240, 16), (240, 30)])
def test_a_scene_rate_that_is_a_multiple_of_the_model_rate_is_exact(scene_fps, model_fps) -> None:
    frames = frames_at_rate(list(range(1, 2 * scene_fps + 2)), scene_fps, model_fps)
    assert len(frames) == 2 * model_fps + 1
    assert video_io.ClipTiming(model_fps, scene_fps, frames).max_error == 0.0


def test_captures_with_gaps_or_out_of_order_go_by_timestamp() -> None:
    """Frames 10, 12, 20 at 24 fps: 0, 2, 10 scene frames in; at 24 fps every model frame
    shows the nearest capture (ties: the later one)."""
    assert frames_at_rate([20, 10, 12], 24, 24) == [10, 12, 12, 12, 12, 12, 20, 20, 20, 20, 20]
    assert frames_at_rate([7], 24, 16) == [7]


def _bundle(root, num_frames: int, fps: float):
    write_video_bundle(root, "sim2video", num_frames=num_frames)
    data = json.loads((root / "bundle.json").read_text())
    data["fps"] = fps
    (root / "bundle.json").write_text(json.dumps(data))
    return read_bundle(root)


def test_clip_timing_counts_model_frames(tmp_path) -> None:
    bundle = _bundle(tmp_path / "b", 49, 24)
    assert video_io.clip_timing(bundle, 16, None).frames == frames_at_rate(bundle.frames, 24, 16)
    assert len(video_io.clip_timing(bundle, 16, 20).frames) == 17  # 4k+1
    assert len(video_io.clip_timing(bundle, 16, 40, strict=False).frames) == 33  # a cap, not a demand
    with pytest.raises(BundleError, match="33 frames at the model's 16 fps"):
        video_io.clip_timing(bundle, 16, 37)
    with pytest.raises(BundleError, match="needs at least 5 frames") as error:
        video_io.clip_timing(_bundle(tmp_path / "short", 3, 24), 16, None)  # 1/12 s: 2 frames at 16 fps
    assert error.value.field == "frames"


def test_capped_size_caps_the_model_frames(tmp_path) -> None:
    bundle = _bundle(tmp_path / "b", 130, 24)
    available = len(video_io.model_frames(bundle, 16))
    size = video_io.capped_size(bundle, None, None, None, available=available, max_side=832, max_frames=81)
    assert (available, size.max_frames, size.capped_from) == (87, 81, {"width": 32, "height": 32, "num_frames": 87})


def test_reading_a_repeated_frame_gives_the_same_image(tmp_path) -> None:
    bundle = _bundle(tmp_path / "b", 5, 24)
    rgb = video_io.read_rgb_frames(bundle, [1, 2, 2, 3], 32, 32)
    depth = video_io.read_depth_frames(bundle, [1, 2, 2, 3], 32, 32)
    assert rgb.shape == (4, 3, 32, 32) and torch.equal(rgb[1], rgb[2]) and not torch.equal(rgb[0], rgb[1])
    assert depth.shape == (4, 32, 32) and torch.equal(depth[1], depth[2])


def test_written_videos_and_images(tmp_path) -> None:
    video = torch.rand(9, 3, 16, 24)
    path = video_io.write_mp4(tmp_path / "clip.mp4", video, 16.0)
    assert iio.immeta(path)["fps"] == 16.0 and iio.imread(path).shape == (9, 16, 24, 3)
    image = video_io.write_png(tmp_path / "frame.png", video[0])
    torch.testing.assert_close(torch.from_numpy(iio.imread(image)).permute(2, 0, 1) / 255.0, video[0], atol=0.5 / 255 + 1e-6, rtol=0)

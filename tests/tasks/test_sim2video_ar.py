"""The sim2video_ar task end to end with the tiny FramePack preset: two sections of one
latent frame each (9 pixel frames of 32x32), autoregressive annealing with a Gibbs sweep.
Bundles are captured at FramePack's 30 fps unless a test is about the frame rate, so their
frames are the model frames one for one."""

from __future__ import annotations

import json

import imageio.v3 as iio
import pytest
import torch

from poe_backend.bundle import BundleError, frames_at_rate, read_bundle
from poe_backend.sampling import SamplingCancelled
from poe_backend.tasks import get_task
from poe_backend.tasks.base import TaskContext
from tests.video_support import tiny_data_dir, write_video_bundle  # noqa: F401 (fixture)

FAST = {"latent_window_size": 1, "levels": 3, "langevin_steps": 1, "particles": 2, "gibbs_sweeps": 1}


def _bundle(root, num_frames: int = 9, fps: float = 30):
    """``write_video_bundle`` without depth, captured at ``fps`` (its own writes 8)."""
    write_video_bundle(root, "sim2video_ar", num_frames=num_frames, with_depth=False)
    data = json.loads((root / "bundle.json").read_text())
    data["fps"] = fps
    (root / "bundle.json").write_text(json.dumps(data))
    return root


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return _bundle(tmp_path_factory.mktemp("bundle"))


def _run(bundle_dir, out_dir, callback=None, should_stop=None, **params):
    task = get_task("sim2video_ar")
    context = TaskContext(bundle=read_bundle(bundle_dir), params=task.Params(**{**FAST, **params}), out_dir=out_dir, models="tiny", callback=callback, should_stop=should_stop)
    result = task.run(context)
    result.write(out_dir)
    return result


@pytest.mark.parametrize("sampling_type", ["inverted", "vanilla"])
def test_product_run_writes_video_and_manifest(tiny_data_dir, bundle_dir, tmp_path, sampling_type) -> None:  # noqa: F811
    progress = []
    result = _run(bundle_dir, tmp_path, callback=progress.append, sampling_type=sampling_type)
    manifest = json.loads((tmp_path / "result.json").read_text())
    assert manifest["experts"] == ["framepack", "render_gaussian"]
    assert manifest["size"]["sections"] == 2 and manifest["size"]["num_frames"] == 9
    assert manifest["expert_inputs"] == {"framepack": {"first_frame": "first_frame"}, "render_gaussian": {"renders": "renders"}}
    assert manifest["outputs"]["first_frame"] == "first_frame.png" and manifest["outputs"]["renders"] == "renders.mp4"
    assert iio.imread(tmp_path / "first_frame.png").shape == (32, 32, 3)
    frames = iio.imread(tmp_path / "video.mp4")
    assert frames.shape == (9, 32, 32, 3)
    latents = torch.load(result.outputs["latents"])["latents"]
    assert latents.shape == (2, 4, 3, 4, 4) and torch.isfinite(latents).all()
    # chunk 0 (3 levels), chunk 1 (3 levels), one sweep over chunks 0 and 1 (gibbs levels each)
    assert progress[-1].level == progress[-1].num_levels and progress[-1].num_levels >= 6


def test_tight_render_gaussian_pins_sections_to_the_renders(tiny_data_dir, bundle_dir, tmp_path) -> None:  # noqa: F811
    """With a small s, the product's sections sit much closer to the render latents than
    FramePack's alone (a random tiny FramePack has no meaningful density of its own, so the
    test compares distances, not a posterior mean)."""
    from poe_backend.families.framepack.runtime import FramePackRuntime
    from poe_backend.tasks import video_io

    pinned = torch.load(_run(bundle_dir, tmp_path / "p", render_std=0.05, gibbs_sweeps=0, levels=6)
                        .outputs["latents"])["latents"]
    alone = torch.load(_run(bundle_dir, tmp_path / "a", mode="framepack", gibbs_sweeps=0, levels=6).outputs["latents"])["latents"]
    runtime = FramePackRuntime("inverted", 1, 2, 32, 32, preset="tiny")
    bundle = read_bundle(bundle_dir)
    renders = video_io.read_rgb_frames(bundle, bundle.frames, 32, 32)
    target = runtime.encode_video(renders.permute(1, 0, 2, 3)[None] * 2 - 1)
    product_error = (pinned - target)[:, :, 1:].pow(2).mean().sqrt()
    alone_error = (alone - target)[:, :, 1:].pow(2).mean().sqrt()
    assert torch.all(pinned[:, :, :1] == target[:, :, :1])  # the first frame's latent is given
    assert product_error < 0.5 * alone_error, (product_error, alone_error)


def test_same_seed_same_result(tiny_data_dir, bundle_dir, tmp_path) -> None:  # noqa: F811
    first = _run(bundle_dir, tmp_path / "a", gibbs_sweeps=0, save_particles=False)
    second = _run(bundle_dir, tmp_path / "b", gibbs_sweeps=0, save_particles=False)
    torch.testing.assert_close(torch.load(first.outputs["latents"])["latents"], torch.load(second.outputs["latents"])["latents"])


def test_cancellation_mid_run(tiny_data_dir, bundle_dir, tmp_path) -> None:  # noqa: F811
    calls = []
    with pytest.raises(SamplingCancelled):
        _run(bundle_dir, tmp_path, should_stop=lambda: calls.append(1) or len(calls) >= 4)
    assert len(calls) == 4 and not (tmp_path / "video.mp4").exists()


def test_too_few_frames_names_the_field(tiny_data_dir, bundle_dir, tmp_path) -> None:  # noqa: F811
    with pytest.raises(BundleError) as error:
        _run(bundle_dir, tmp_path, num_sections=3)
    assert error.value.field == "frames"
    with pytest.raises(BundleError) as error:
        _run(bundle_dir, tmp_path, latent_window_size=9)
    assert error.value.field == "frames"


def test_max_frames_drops_sections_and_the_result_says_so(tiny_data_dir, bundle_dir, tmp_path) -> None:  # noqa: F811
    result = _run(bundle_dir, tmp_path, max_frames=8, gibbs_sweeps=0, save_particles=False)  # 8 -> one section, 5 frames
    assert result.manifest["size"]["sections"] == 1 and result.manifest["size"]["num_frames"] == 5
    assert result.manifest["size"]["capped_from"] == {"width": 32, "height": 32, "num_frames": 9}
    with pytest.raises(BundleError) as error:
        _run(bundle_dir, tmp_path / "b", max_frames=8, num_sections=2)
    assert error.value.field == "params.num_sections"


@pytest.mark.parametrize("sampling_type", ["inverted", "vanilla"])
def test_the_task_keeps_exactly_the_roles_the_weights_manager_downloads(bundle_dir, tmp_path, sampling_type) -> None:
    from poe_backend.tasks.requirements import required_roles

    task = get_task("sim2video_ar")
    context = TaskContext(bundle=read_bundle(bundle_dir), params=task.Params(sampling_type=sampling_type), out_dir=tmp_path, models="default")
    assert task.model_roles(context) == required_roles("sim2video_ar", {"sampling_type": sampling_type})


def test_the_video_is_the_particle_drawn_with_the_seed(tiny_data_dir, bundle_dir, tmp_path) -> None:  # noqa: F811
    """``video.mp4`` is particle ``chosen_particle`` (drawn uniformly with the job's seed among
    the equally weighted particles), the same file as that particle's own video."""
    result = _run(bundle_dir, tmp_path, particles=4, gibbs_sweeps=0)
    manifest = json.loads((tmp_path / "result.json").read_text())
    chosen = manifest["chosen_particle"]
    assert 0 <= chosen < 4
    torch.testing.assert_close(torch.from_numpy(iio.imread(result.outputs["video"])), torch.from_numpy(iio.imread(result.outputs[f"particle_{chosen:02d}"])))


def test_a_24_fps_capture_is_sampled_at_framepack_30_fps(tiny_data_dir, tmp_path) -> None:  # noqa: F811
    """9 frames at 24 fps last 1/3 s: 11 frames at 30 fps, of which two sections of one
    latent frame take 9 (0.27 s), every fourth captured frame shown twice; the videos are
    written at 30 fps and result.json says both rates and the timing (±1/60 s here)."""
    result = _run(_bundle(tmp_path / "b", fps=24), tmp_path / "out", gibbs_sweeps=0, particles=1)
    manifest = json.loads((tmp_path / "out" / "result.json").read_text())
    assert manifest["frames"] == frames_at_rate(list(range(1, 10)), 24, 30)[:9] == [1, 2, 3, 3, 4, 5, 6, 7, 7]
    size = manifest["size"]
    assert (size["num_frames"], size["sections"], size["fps"], size["scene_fps"]) == (9, 2, 30.0, 24.0)
    assert manifest["timing"]["times_s"][-1] == pytest.approx(8 / 30) and manifest["timing"]["max_error_s"] == pytest.approx(1 / 60)
    for name in ("video", "renders", "particle_00"):
        assert iio.immeta(result.outputs[name])["fps"] == 30.0 and iio.imread(result.outputs[name]).shape[0] == 9, name
    renders = iio.imread(result.outputs["renders"]).astype(float)
    assert abs(renders[2] - renders[3]).mean() < 2 < abs(renders[3] - renders[4]).mean()  # scene frame 3 shown twice

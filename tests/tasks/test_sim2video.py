"""The sim2video task end to end with the tiny Wan preset on a tiny synthetic bundle."""

from __future__ import annotations

import json

import imageio.v3 as iio
import pytest
import torch

from poe_backend.bundle import BundleError, read_bundle
from poe_backend.sampling import SamplingCancelled
from poe_backend.tasks import get_task
from poe_backend.tasks.base import TaskContext
from poe_backend.tasks.video_io import depth_to_disparity_video
from tests.video_support import tiny_data_dir, write_video_bundle  # noqa: F401 (fixture)

FAST = {"levels": 3, "langevin_steps": 1, "particles": 2}


def _run(bundle_dir, out_dir, models="tiny", **params):
    task = get_task("sim2video")
    context = TaskContext(bundle=read_bundle(bundle_dir), params=task.Params(**{**FAST, **params}), out_dir=out_dir, models=models)
    result = task.run(context)
    result.write(out_dir)
    return result


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return write_video_bundle(tmp_path_factory.mktemp("bundle"), "sim2video", num_frames=6)


def test_product_run_writes_video_particles_and_manifest(tiny_data_dir, bundle_dir, tmp_path) -> None:  # noqa: F811
    progress = []
    task = get_task("sim2video")
    context = TaskContext(bundle=read_bundle(bundle_dir), params=task.Params(**FAST), out_dir=tmp_path, models="tiny", callback=progress.append)
    result = task.run(context)
    result.write(tmp_path)
    manifest = json.loads((tmp_path / "result.json").read_text())
    assert manifest["kind"] == "video" and manifest["primary"] == "video"
    assert manifest["size"] == {"height": 32, "width": 32, "num_frames": 5, "fps": 8.0, "capped_from": None}  # 6 frames cut to 4k+1
    assert [expert["expert"] for expert in manifest["experts"]] == ["wan_i2v", "wan_vace_depth"]
    assert manifest["seed"] == 3 and manifest["params"]["levels"] == 3
    frames = iio.imread(tmp_path / "video.mp4")
    assert frames.shape == (5, 32, 32, 3) and frames.dtype.name == "uint8"
    assert (tmp_path / "particles" / "particle_01.mp4").is_file()
    latents = torch.load(tmp_path / "latents.pt")["latents"]
    assert latents.shape == (2, 16, 2, 4, 4) and torch.isfinite(latents).all()
    assert progress and progress[-1].level == progress[-1].num_levels == 3


def test_same_seed_same_result_other_seed_differs(tiny_data_dir, bundle_dir, tmp_path) -> None:  # noqa: F811
    first = _run(bundle_dir, tmp_path / "a", mode="depth")
    second = _run(bundle_dir, tmp_path / "b", mode="depth")
    third = _run(bundle_dir, tmp_path / "c", mode="depth", seed=11)

    def load(result):
        return torch.load(result.outputs["latents"])["latents"]

    torch.testing.assert_close(load(first), load(second))
    assert not torch.allclose(load(first), load(third))


@pytest.mark.parametrize("mode, pairing, experts", [
    ("i2v", "auto", ["wan_i2v"]),
    ("i2v", "shared_vace", ["wan_vace_first_frame"]),
    ("product", "shared_vace", ["wan_vace_first_frame", "wan_vace_depth"]),
    ("vace_combined", "auto", ["wan_vace_first_frame_and_depth"]),
    ("ddim_inversion", "auto", ["wan_i2v"]),
    ("ddim_inversion", "shared_vace", ["wan_vace_first_frame"]),
])
def test_baselines_and_pairings(tiny_data_dir, bundle_dir, tmp_path, mode, pairing, experts) -> None:  # noqa: F811
    result = _run(bundle_dir, tmp_path, mode=mode, pairing=pairing, particles=1, save_particles=False, sampler="summed_velocity")
    assert [expert["expert"] for expert in result.manifest["experts"]] == experts
    assert result.outputs["video"].is_file()


def test_cancellation_mid_run(tiny_data_dir, bundle_dir, tmp_path) -> None:  # noqa: F811
    calls = []
    task = get_task("sim2video")

    def stop_after_two() -> bool:
        calls.append(1)
        return len(calls) >= 2

    context = TaskContext(bundle=read_bundle(bundle_dir), params=task.Params(**FAST), out_dir=tmp_path, models="tiny", should_stop=stop_after_two)
    with pytest.raises(SamplingCancelled):
        task.run(context)
    assert len(calls) == 2 and not (tmp_path / "video.mp4").exists()


def test_bundle_errors_name_the_field(tiny_data_dir, tmp_path) -> None:  # noqa: F811
    with pytest.raises(BundleError) as error:
        _run(write_video_bundle(tmp_path / "short", "sim2video", num_frames=3), tmp_path / "o1")
    assert error.value.field == "frames"
    with pytest.raises(BundleError) as error:
        _run(write_video_bundle(tmp_path / "ok", "sim2video", num_frames=5), tmp_path / "o2", first_frame="missing.png")
    assert error.value.field == "params.first_frame"
    with pytest.raises(ValueError):
        get_task("sim2video").Params(particles=0)
    with pytest.raises(ValueError):
        get_task("sim2video").Params(unknown=1)


def test_depth_becomes_normalised_disparity() -> None:
    depth = torch.tensor([[[2.0, 4.0], [float("inf"), 1.0]]])
    video = depth_to_disparity_video(depth)
    assert video.shape == (1, 3, 2, 2)
    torch.testing.assert_close(video[0, 0], torch.tensor([[0.5, 0.25], [0.0, 1.0]]))


def test_preview_preset_uses_vace_1_3b_small_settings(tmp_path, monkeypatch, bundle_dir) -> None:
    """``--models preview``: unset fields take the preview values, both experts run on
    VACE-1.3B (shared mode), and missing weights name that repo before anything loads."""
    from poe_backend.models import specs

    task = get_task("sim2video")
    params = task.Params(levels=7, preset="preview").effective()
    assert params.levels == 7 and params.height == task.Params.PREVIEW["height"] and params.langevin_steps == 0
    assert task.Params().effective() == task.Params()
    monkeypatch.setenv("POE_DATA_DIR", str(tmp_path))
    with pytest.raises(specs.MissingWeights, match="Wan-AI/Wan2.1-VACE-1.3B-diffusers"):
        _run(bundle_dir, tmp_path / "out", models="preview")


CAP_RUN = {"mode": "depth", "particles": 1, "levels": 2, "langevin_steps": 0, "save_particles": False}


def test_full_hd_bundle_is_resized_to_the_cap_and_the_result_says_so(tiny_data_dir, tmp_path) -> None:  # noqa: F811
    """A 1920×1080 scene (Blender's default) becomes 832×464: longer side 832, aspect kept,
    sides rounded down to 16 (1080·832/1920 = 468 -> 464)."""
    bundle = write_video_bundle(tmp_path / "hd", "sim2video", num_frames=5, height=1080, width=1920)
    _run(bundle, tmp_path / "out", **CAP_RUN)
    manifest = json.loads((tmp_path / "out" / "result.json").read_text())
    assert manifest["size"]["width"] == 832 and manifest["size"]["height"] == 464
    assert manifest["size"]["capped_from"] == {"width": 1920, "height": 1080, "num_frames": 5}
    assert iio.imread(tmp_path / "out" / "video.mp4").shape == (5, 464, 832, 3)


def test_long_bundle_is_cut_to_max_frames(tiny_data_dir, tmp_path) -> None:  # noqa: F811
    bundle = write_video_bundle(tmp_path / "long", "sim2video", num_frames=90)
    _run(bundle, tmp_path / "out", **CAP_RUN)
    manifest = json.loads((tmp_path / "out" / "result.json").read_text())
    assert manifest["size"]["num_frames"] == 81 and manifest["frames"] == list(range(1, 82))
    assert manifest["size"]["capped_from"] == {"width": 32, "height": 32, "num_frames": 90}
    _run(bundle, tmp_path / "lower", **CAP_RUN, max_frames=20)  # 20 -> 17 = 4·4 + 1
    assert json.loads((tmp_path / "lower" / "result.json").read_text())["size"]["num_frames"] == 17


@pytest.mark.parametrize("field, value", [("width", 848), ("height", 848), ("num_frames", 85)])
def test_explicit_sizes_above_the_caps_name_the_field(tiny_data_dir, bundle_dir, tmp_path, field, value) -> None:  # noqa: F811
    with pytest.raises(BundleError) as error:
        _run(bundle_dir, tmp_path, **{field: value})
    assert error.value.field == f"params.{field}"


def test_ddim_inversion_is_one_deterministic_solve_from_the_inverted_render(tiny_data_dir, bundle_dir, tmp_path) -> None:  # noqa: F811
    result = _run(bundle_dir, tmp_path / "out", mode="ddim_inversion", particles=2, source_prompt="a rendering of a box")
    latents = torch.load(result.outputs["latents"])["latents"]
    torch.testing.assert_close(latents[0], latents[1])  # deterministic: every particle is the same ODE solve


def _with_params(bundle_dir, params: dict):
    data = json.loads((bundle_dir / "bundle.json").read_text())
    data["params"] = params
    (bundle_dir / "bundle.json").write_text(json.dumps(data))
    return bundle_dir


@pytest.mark.parametrize("mode", ["i2v", "ddim_inversion"])
def test_modes_without_a_depth_control_run_on_a_bundle_without_depth(tiny_data_dir, tmp_path, mode) -> None:  # noqa: F811
    """i2v and ddim_inversion read no depth: a bundle without the pass is valid for them and
    the run loads no VACE transformer (the paper's pairing uses the I2V model alone)."""
    bundle = _with_params(write_video_bundle(tmp_path / "rgb-only", "sim2video", num_frames=5, with_depth=False), {"mode": mode})
    result = _run(bundle, tmp_path / "out", mode=mode, particles=1, save_particles=False, sampler="summed_velocity")
    assert result.outputs["video"].is_file() and "control_depth" not in result.outputs
    assert list(result.manifest["placement"]["placements"]) == ["wan.transformer.i2v"]


def test_modes_with_a_depth_control_still_need_the_depth_pass(tiny_data_dir, tmp_path) -> None:  # noqa: F811
    bundle = write_video_bundle(tmp_path / "rgb-only", "sim2video", num_frames=5, with_depth=False)
    with pytest.raises(BundleError) as error:
        read_bundle(bundle)  # params default to mode "product"
    assert error.value.field == "passes.depth"
    with pytest.raises(BundleError) as error:
        _run(_with_params(bundle, {"mode": "i2v"}), tmp_path / "out", mode="depth")  # the job's mode overrides the bundle's
    assert error.value.field == "passes.depth"
    with pytest.raises(BundleError) as error:
        read_bundle(_with_params(bundle, {"mode": ["not", "a", "mode"]}))  # a hostile value: the full requirement, no crash
    assert error.value.field == "passes.depth"
    depth_only = write_video_bundle(tmp_path / "depth", "sim2video", num_frames=5)
    (depth_only / "rgb" / "0001.png").unlink()
    read_bundle(_with_params(depth_only, {"mode": "depth"}), check_files=False)  # depth-to-video needs no first frame


MODES = ["product", "i2v", "depth", "vace_combined", "ddim_inversion"]


@pytest.mark.parametrize("preset", ["default", "preview", "tiny"])
@pytest.mark.parametrize("pairing", ["auto", "i2v_vace", "shared_vace"])
def test_the_task_keeps_exactly_the_roles_the_weights_manager_downloads(tmp_path, preset, pairing) -> None:
    """``model_roles`` (what the model cache keeps across jobs) equals ``required_roles``
    (what ``poe-backend models`` checks and pulls) for every mode and pairing."""
    from poe_backend.tasks.requirements import required_roles

    task = get_task("sim2video")
    bundle = read_bundle(write_video_bundle(tmp_path / "b", "sim2video"))
    for mode in MODES:
        context = TaskContext(bundle=bundle, params=task.Params(mode=mode, pairing=pairing), out_dir=tmp_path, models=preset)
        assert task.model_roles(context) == required_roles("sim2video", {"mode": mode, "pairing": pairing}, preset), (mode, pairing)
    assert "wan.transformer.vace" not in required_roles("sim2video", {"mode": "ddim_inversion"})

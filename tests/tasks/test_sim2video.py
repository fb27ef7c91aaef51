"""The sim2video task end to end with the tiny Wan preset on a tiny synthetic bundle.

Bundles are captured at Wan's 16 fps unless a test is about the frame rate, so their
frames are the model frames one for one."""

from __future__ import annotations

import json

import imageio.v3 as iio
import pytest
import torch

from poe_backend.bundle import BundleError, frames_at_rate, read_bundle
from poe_backend.families.wan.declaration import NEGATIVE_PROMPT
from poe_backend.sampling import SamplingCancelled
from poe_backend.tasks import get_task
from poe_backend.tasks.base import TaskContext
from poe_backend.tasks.video_io import depth_to_disparity_video, read_rgb_frames
from tests.video_support import tiny_data_dir, write_video_bundle  # noqa: F401 (fixture)

FAST = {"levels": 3, "langevin_steps": 1, "particles": 2}


def _bundle(root, num_frames: int = 5, fps: float = 16, **options):
    """``write_video_bundle`` captured at ``fps`` (its own writes 8)."""
    write_video_bundle(root, "sim2video", num_frames=num_frames, **options)
    data = json.loads((root / "bundle.json").read_text())
    data["fps"] = fps
    (root / "bundle.json").write_text(json.dumps(data))
    return root


def _run(bundle_dir, out_dir, models="tiny", **params):
    task = get_task("sim2video")
    context = TaskContext(bundle=read_bundle(bundle_dir), params=task.Params(**{**FAST, **params}), out_dir=out_dir, models=models)
    result = task.run(context)
    result.write(out_dir)
    return result


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return _bundle(tmp_path_factory.mktemp("bundle"), num_frames=6)


def test_product_run_writes_video_particles_and_manifest(tiny_data_dir, bundle_dir, tmp_path) -> None:  # noqa: F811
    progress = []
    task = get_task("sim2video")
    context = TaskContext(bundle=read_bundle(bundle_dir), params=task.Params(**FAST), out_dir=tmp_path, models="tiny", callback=progress.append)
    result = task.run(context)
    result.write(tmp_path)
    manifest = json.loads((tmp_path / "result.json").read_text())
    assert manifest["kind"] == "video" and manifest["primary"] == "video"
    assert manifest["size"] == {"height": 32, "width": 32, "num_frames": 5, "fps": 16.0, "scene_fps": 16.0, "capped_from": None}  # 6 frames cut to 4k+1
    assert [expert["expert"] for expert in manifest["experts"]] == ["wan_i2v", "wan_vace_depth"]
    assert manifest["expert_inputs"] == {"wan_i2v": {"first_frame": "first_frame"}, "wan_vace_depth": {"control": "control_depth"}}
    assert manifest["outputs"]["first_frame"] == "first_frame.png" and manifest["outputs"]["control_depth"] == "control_depth.mp4"
    first_frame = torch.from_numpy(iio.imread(tmp_path / "first_frame.png")).permute(2, 0, 1) / 255.0
    torch.testing.assert_close(first_frame, read_rgb_frames(read_bundle(bundle_dir), [1], 32, 32)[0], atol=1 / 255, rtol=0)
    assert manifest["seed"] == 3 and manifest["params"]["levels"] == 3
    frames = iio.imread(tmp_path / "video.mp4")
    assert frames.shape == (5, 32, 32, 3) and frames.dtype.name == "uint8"
    assert (tmp_path / "particles" / "particle_01.mp4").is_file()
    latents = torch.load(tmp_path / "latents.pt")["latents"]
    assert latents.shape == (2, 16, 2, 4, 4) and torch.isfinite(latents).all()
    assert progress and progress[-1].level == progress[-1].num_levels == 3


def test_conditioned_product_aligns_the_first_frame_expert_and_counts_cfg_and_backward(tiny_data_dir, bundle_dir, tmp_path) -> None:  # noqa: F811
    """cond_weight > 0: the I2V expert is conditioned on the depth expert; with true CFG
    each evaluation is two forwards, and the child's backward two more per forward, so a
    round costs 2·3 + 2 = 8 forward-equivalents, planned and done alike."""
    progress = []
    task = get_task("sim2video")
    context = TaskContext(bundle=read_bundle(bundle_dir), params=task.Params(**FAST, cond_weight=0.2), out_dir=tmp_path / "c", models="tiny", callback=progress.append)
    context.out_dir.mkdir()
    manifest = task.run(context).manifest
    assert manifest["experts"][0]["conditioned_on"] == ["wan_vace_depth"]
    assert progress[-1].forwards == progress[-1].planned_forwards == progress[-1].nfe // 2 * 8
    plain = []
    context = TaskContext(bundle=read_bundle(bundle_dir), params=task.Params(**FAST), out_dir=tmp_path / "p", models="tiny", callback=plain.append)
    context.out_dir.mkdir()
    task.run(context)
    assert plain[-1].forwards == plain[-1].planned_forwards == plain[-1].nfe // 2 * 4  # CFG: two forwards per evaluation


def test_same_seed_same_result_other_seed_differs(tiny_data_dir, bundle_dir, tmp_path) -> None:  # noqa: F811
    first = _run(bundle_dir, tmp_path / "a", mode="depth")
    second = _run(bundle_dir, tmp_path / "b", mode="depth")
    third = _run(bundle_dir, tmp_path / "c", mode="depth", seed=11)

    def load(result):
        return torch.load(result.outputs["latents"])["latents"]

    torch.testing.assert_close(load(first), load(second))
    assert not torch.allclose(load(first), load(third))


@pytest.mark.parametrize("mode, pairing, inputs", [
    ("i2v", "auto", {"wan_i2v": {"first_frame": "first_frame"}}),
    ("i2v", "shared_vace", {"wan_vace_first_frame": {"first_frame": "first_frame"}}),
    ("product", "shared_vace", {"wan_vace_first_frame": {"first_frame": "first_frame"}, "wan_vace_depth": {"control": "control_depth"}}),
    ("vace_combined", "auto", {"wan_vace_first_frame_and_depth": {"first_frame": "first_frame", "control": "control_depth"}}),
    ("ddim_inversion", "auto", {"wan_i2v": {"first_frame": "first_frame", "inverted": "renders"}}),
    ("ddim_inversion", "shared_vace", {"wan_vace_first_frame": {"first_frame": "first_frame", "inverted": "renders"}}),
])
def test_baselines_and_pairings_save_what_each_expert_saw(tiny_data_dir, bundle_dir, tmp_path, mode, pairing, inputs) -> None:  # noqa: F811
    """Every expert's inputs are outputs of the job, named in ``expert_inputs``."""
    result = _run(bundle_dir, tmp_path, mode=mode, pairing=pairing, particles=1, save_particles=False, sampler="summed_velocity")
    assert [expert["expert"] for expert in result.manifest["experts"]] == list(inputs)
    assert result.manifest["expert_inputs"] == inputs
    assert result.outputs["video"].is_file()
    for output in {name for expert in inputs.values() for name in expert.values()}:
        assert result.outputs[output].is_file(), output
    if mode == "ddim_inversion":
        assert iio.imread(result.outputs["renders"]).shape == (5, 32, 32, 3)


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
        _run(_bundle(tmp_path / "short", num_frames=3), tmp_path / "o1")
    assert error.value.field == "frames"
    with pytest.raises(BundleError) as error:
        _run(_bundle(tmp_path / "ok", num_frames=5), tmp_path / "o2", first_frame="missing.png")
    assert error.value.field == "params.first_frame"
    with pytest.raises(ValueError):
        get_task("sim2video").Params(particles=0)
    with pytest.raises(ValueError):
        get_task("sim2video").Params(unknown=1)


def test_depth_becomes_disparity_normalised_per_frame_like_vace() -> None:
    """Disparities 1/2, 1/4, 1 min–max over the frame's hits: 1/3, 0, 1; background 0."""
    depth = torch.tensor([[[2.0, 4.0], [float("inf"), 1.0]]])
    video = depth_to_disparity_video(depth)
    assert video.shape == (1, 3, 2, 2)
    torch.testing.assert_close(video[0, 0], torch.tensor([[1 / 3, 0.0], [0.0, 1.0]]))


def test_a_frame_whose_nearest_object_is_4x_farther_still_spans_the_full_range() -> None:
    """VACE's annotator normalises each frame: frame 2 (everything 4x farther) is the same
    control as frame 1, nearest white, farthest black, not a dimmer copy."""
    near = torch.tensor([[1.0, 2.0], [3.0, float("inf")]])
    video = depth_to_disparity_video(torch.stack([near, 4 * near]))
    for frame in video[:, 0]:
        assert frame.max() == 1.0 and frame[torch.isfinite(near)].min() == 0.0
    torch.testing.assert_close(video[1], video[0])
    assert video[1, 0, 1, 1] == 0.0  # background


def test_flat_and_empty_frames_and_an_all_background_clip() -> None:
    """One depth in a frame: its hits white on black background; no hit: black; no hit in
    the whole clip: nothing to condition on."""
    inf = float("inf")
    video = depth_to_disparity_video(torch.tensor([[[3.0, 3.0], [inf, 3.0]], [[inf, inf], [inf, float("nan")]], [[1.0, 2.0], [0.0, -1.0]]]))
    torch.testing.assert_close(video[0, 0], torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    assert not video[1].any()
    torch.testing.assert_close(video[2, 0], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(BundleError) as error:
        depth_to_disparity_video(torch.full((2, 2, 2), inf))
    assert error.value.field == "passes.depth"


def test_wan_negative_prompt_defaults_to_diffusers_examples_and_is_editable() -> None:
    params = get_task("sim2video").Params()
    assert params.negative_prompt == NEGATIVE_PROMPT
    from diffusers.pipelines.wan import pipeline_wan_i2v, pipeline_wan_vace

    for pipeline in (pipeline_wan_i2v, pipeline_wan_vace):  # the very text of diffusers' examples
        assert f'negative_prompt = "{NEGATIVE_PROMPT}"' in pipeline.EXAMPLE_DOC_STRING, pipeline.__name__
    assert get_task("sim2video").Params(negative_prompt="").negative_prompt == ""
    assert get_task("sim2video_ar").Params().negative_prompt == ""  # FramePack's (true CFG is off by default)


def test_a_2_second_simulation_at_24_fps_is_33_frames_at_wan_16_fps(tiny_data_dir, tmp_path) -> None:  # noqa: F811
    """Frames 1..49 at 24 fps last 2 s: 33 frames at 16 fps, model frame k showing the
    captured frame nearest k/16 s (±1/48 s), every video written at 16 fps, and result.json
    says both rates and the timing."""
    bundle = _bundle(tmp_path / "b", num_frames=49, fps=24)
    result = _run(bundle, tmp_path / "out", **CAP_RUN)
    manifest = json.loads((tmp_path / "out" / "result.json").read_text())
    assert manifest["size"] == {"height": 32, "width": 32, "num_frames": 33, "fps": 16.0, "scene_fps": 24.0, "capped_from": None}
    assert manifest["frames"] == frames_at_rate(list(range(1, 50)), 24, 16) and manifest["frames"][:5] == [1, 3, 4, 6, 7] and manifest["frames"][-1] == 49
    timing = manifest["timing"]
    assert timing["scene_frames"] == manifest["frames"] and timing["fps"] == 16.0 and timing["scene_fps"] == 24.0
    assert timing["times_s"][-1] == timing["scene_times_s"][-1] == 2.0
    assert timing["max_error_s"] == pytest.approx(1 / 48)
    for name in ("video", "control_depth"):
        assert iio.immeta(result.outputs[name])["fps"] == 16.0 and iio.imread(result.outputs[name]).shape[0] == 33, name
    assert manifest["expert_inputs"] == {"wan_vace_depth": {"control": "control_depth"}}


def test_num_frames_and_max_frames_count_model_frames(tiny_data_dir, tmp_path) -> None:  # noqa: F811
    """At 24 fps, 81 model frames (5 s at 16 fps) need 121 captured frames; a 2 s capture
    cannot give 37 frames at 16 fps."""
    long = _bundle(tmp_path / "long", num_frames=130, fps=24)
    _run(long, tmp_path / "out", **CAP_RUN)
    manifest = json.loads((tmp_path / "out" / "result.json").read_text())
    assert manifest["size"]["num_frames"] == 81 and manifest["frames"][-1] == 121 and manifest["timing"]["times_s"][-1] == 5.0
    assert manifest["size"]["capped_from"] == {"width": 32, "height": 32, "num_frames": 87}  # 129/24 s = 86/16 s: 87 frames at 16 fps
    with pytest.raises(BundleError, match="are 33 frames at the model's 16 fps") as error:
        _run(_bundle(tmp_path / "short", num_frames=49, fps=24), tmp_path / "o2", **CAP_RUN, num_frames=37)
    assert error.value.field == "frames"


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
    bundle = _bundle(tmp_path / "hd", num_frames=5, height=1080, width=1920)
    _run(bundle, tmp_path / "out", **CAP_RUN)
    manifest = json.loads((tmp_path / "out" / "result.json").read_text())
    assert manifest["size"]["width"] == 832 and manifest["size"]["height"] == 464
    assert manifest["size"]["capped_from"] == {"width": 1920, "height": 1080, "num_frames": 5}
    assert iio.imread(tmp_path / "out" / "video.mp4").shape == (5, 464, 832, 3)


def test_long_bundle_is_cut_to_max_frames(tiny_data_dir, tmp_path) -> None:  # noqa: F811
    bundle = _bundle(tmp_path / "long", num_frames=90)
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
    bundle = _with_params(_bundle(tmp_path / "rgb-only", num_frames=5, with_depth=False), {"mode": mode})
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

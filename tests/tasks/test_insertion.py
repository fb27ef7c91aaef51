"""The insertion task end to end with the tiny preset (32x48, a few levels)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.tasks.image_bundles import HEIGHT, WIDTH, insertion_bundle
from poe_backend.bundle import BundleError
from poe_backend.sampling import SamplingCancelled
from poe_backend.tasks import get_task
from poe_backend.tasks.base import TaskContext

FAST = {"levels": 3, "langevin_steps": 1, "particles": 2, "max_sequence_length": 16}


def run(tmp_path, name: str, params: dict, **context):
    bundle = insertion_bundle(tmp_path / f"bundle-{name}")
    task = get_task("insertion")
    out = tmp_path / f"out-{name}"
    out.mkdir()
    result = task.run(TaskContext(bundle=bundle, params=task.Params(**params), out_dir=out, models="tiny", **context))
    result.write(out)
    return result, out


def test_product_writes_image_particles_and_manifest(tmp_path):
    progress = []
    result, out = run(tmp_path, "product", FAST, callback=progress.append)
    image = np.asarray(Image.open(out / "image.png"))
    assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8
    particles = np.load(out / "particles.npz")
    assert particles["images"].shape == (2, HEIGHT, WIDTH, 3) and particles["log_weights"].shape == (2,)
    assert np.isfinite(particles["log_weights"]).all()
    manifest = json.loads((out / "result.json").read_text())
    assert manifest["kind"] == "image" and manifest["outputs"]["image"] == "image.png"
    assert manifest["seed"] == 7 and manifest["models"] == "tiny" and manifest["params"]["levels"] == 3
    calls = manifest["sampler_stats"]["expert_calls"]
    # both experts at every evaluation: 1 + (transport substeps + 1 Langevin) + last transport
    assert calls["depth"] == calls["fill"] == manifest["sampler_stats"]["nfe_per_particle"] // 2 >= 4
    assert manifest["model_specs"]["flux.transformer.fill"]["local_dir"] == "tiny/flux"
    assert [p.level for p in progress][-1] == 3 and progress[-1].nfe == calls["depth"] + calls["fill"]
    # the whole cost is known from the first report on, substeps included, and it is exact
    assert {p.planned_nfe for p in progress} == {manifest["sampler_stats"]["nfe_per_particle"]}


def test_expert_inputs_are_saved_and_listed(tmp_path):
    """What Depth and Fill were given is written and listed in result.json: the disparity
    (near = white, background black), the masked plate (the object's pixels grey, the rest
    the plate) and the mask."""
    _, out = run(tmp_path, "inputs", {**FAST, "particles": 1})
    manifest = json.loads((out / "result.json").read_text())
    assert manifest["expert_inputs"] == {"depth": {"control": "depth_control"}, "fill": {"masked_plate": "fill_masked_plate", "mask": "fill_mask"}}
    control = np.asarray(Image.open(out / manifest["outputs"]["depth_control"]))
    mask = np.asarray(Image.open(out / manifest["outputs"]["fill_mask"])) > 127
    masked = np.asarray(Image.open(out / manifest["outputs"]["fill_masked_plate"]))
    plate = np.asarray(Image.open(out / "image.png"))  # blended: the plate outside the mask
    assert control.shape == (HEIGHT, WIDTH) and control.max() == 255 and mask.any()
    assert (masked[mask] == 128).all() and np.array_equal(masked[~mask], plate[~mask])


def test_conditioned_product_counts_the_backward(tmp_path):
    """cond_weight > 0: Fill is aligned to Depth over the object's tokens; each round costs
    Depth's forward + Fill's forward and backward (1 + 3), planned and done alike, and the
    result differs from the unconditioned run."""
    progress = []
    _, out = run(tmp_path, "conditioned", {**FAST, "cond_weight": 0.5}, callback=progress.append)
    _, plain = run(tmp_path, "plain", FAST)
    assert progress[-1].forwards == progress[-1].planned_forwards == progress[-1].nfe // 2 * 4
    assert not np.array_equal(np.asarray(Image.open(out / "raw.png")), np.asarray(Image.open(plain / "raw.png")))


def test_mask_preservation_and_determinism(tmp_path):
    _, first = run(tmp_path, "a", FAST)
    _, second = run(tmp_path, "b", FAST)
    image = np.asarray(Image.open(first / "image.png"))
    assert np.array_equal(image, np.asarray(Image.open(second / "image.png")))
    plate = np.asarray(Image.open(tmp_path / "bundle-a" / "plate.png"))
    mask = np.asarray(Image.open(tmp_path / "bundle-a" / "mask" / "ball" / "0001.png")) > 0
    assert np.array_equal(image[~mask], plate[~mask])
    raw = np.asarray(Image.open(first / "raw.png"))
    assert not np.array_equal(raw[~mask], plate[~mask])  # blending did the work
    _, other_seed = run(tmp_path, "c", {**FAST, "seed": 8})
    assert not np.array_equal(np.asarray(Image.open(other_seed / "raw.png")), raw)


@pytest.mark.parametrize("method", ["depth", "fill", "rf_solver"])
def test_baselines_run(tmp_path, method):
    result, out = run(tmp_path, method, {**FAST, "method": method, "particles": 1})
    manifest = json.loads((out / "result.json").read_text())
    assert np.asarray(Image.open(out / "image.png")).shape == (HEIGHT, WIDTH, 3)
    expected = {"depth": "summed-velocity", "fill": "summed-velocity", "rf_solver": "V shared in 2 steps"}[method]
    assert expected in manifest["sampler_stats"]["path"]
    if method != "rf_solver":
        assert manifest["params"]["sampler"] == "summed_velocity"  # the manifest reproduces the run


def test_cancellation_mid_run(tmp_path):
    reports = []
    with pytest.raises(SamplingCancelled):
        run(tmp_path, "cancel", FAST, callback=reports.append, should_stop=lambda: len(reports) >= 2)
    assert len(reports) == 2


def test_bad_object_and_missing_prompt_are_named(tmp_path):
    with pytest.raises(ValueError, match="object"):
        run(tmp_path, "object", {**FAST, "object": "nothing"})
    bundle = insertion_bundle(tmp_path / "noprompt", prompt="")
    object.__setattr__(bundle.objects[0], "prompt", "")
    task = get_task("insertion")
    with pytest.raises(BundleError, match="prompt"):
        task.run(TaskContext(bundle=bundle, params=task.Params(**FAST), out_dir=tmp_path, models="tiny"))


def test_params_are_validated_with_ranges():
    params = get_task("insertion").Params
    with pytest.raises(ValueError, match="levels"):
        params(levels=1)
    with pytest.raises(ValueError, match="unknown_name|extra"):
        params(unknown_name=3)
    preview = params(preset="preview", particles=3).effective()
    assert preview.levels == 8 and preview.max_side == 512 and preview.particles == 3

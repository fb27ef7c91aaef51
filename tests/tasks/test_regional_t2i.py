"""regional_t2i end to end with the tiny preset: regional FLUX experts x VQAScore."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from image_bundles import HEIGHT, WIDTH, regional_bundle
from poe_backend.tasks import get_task
from poe_backend.tasks.base import TaskContext
from poe_backend.tasks.regional_t2i import read_regions

FAST = {"levels": 3, "langevin_steps": 1, "particles": 3, "max_sequence_length": 16, "vqa_max_pixels": 56 * 56, "ess_threshold": 1.0}


def run(tmp_path, name, params):
    bundle = regional_bundle(tmp_path / f"bundle-{name}")
    task = get_task("regional_t2i")
    out = tmp_path / f"out-{name}"
    out.mkdir()
    result = task.run(TaskContext(bundle=bundle, params=task.Params(**params), out_dir=out, models="tiny"))
    result.write(out)
    return json.loads((out / "result.json").read_text()), out


def test_regions_come_from_first_frame_boxes(tmp_path):
    bundle = regional_bundle(tmp_path / "b")
    regions, skipped = read_regions(bundle, HEIGHT, WIDTH)
    assert regions == [("a dog", [0, 0, 20, 30]), ("a cat", [24, 8, 47, 32])]
    assert skipped == ["bird"]
    regions, _ = read_regions(bundle, HEIGHT * 2, WIDTH * 2)
    assert regions[0][1] == [0, 0, 40, 60]


def test_regional_product_with_vqascore(tmp_path):
    manifest, out = run(tmp_path, "regional", FAST)
    assert np.asarray(Image.open(out / "image.png")).shape == (HEIGHT, WIDTH, 3)
    particles = np.load(out / "particles.npz")
    assert particles["images"].shape == (3, HEIGHT, WIDTH, 3)
    assert manifest["best_index"] == int(np.argmax(particles["log_weights"]))
    assert set(manifest["vqascore"]) == {"a park", "a dog", "a cat"}
    assert all(0 < score < 1 for scores in manifest["vqascore"].values() for score in scores)
    assert manifest["skipped_regions"] == ["bird"]
    assert manifest["sampler_stats"]["expert_calls"] == [4, 4, 4]
    assert manifest["sampler_stats"]["resample_count"] >= 1  # ess_threshold 1 resamples


def test_flux_baseline_and_determinism(tmp_path):
    params = {**FAST, "method": "flux", "particles": 2}
    first, out_a = run(tmp_path, "a", params)
    _, out_b = run(tmp_path, "b", params)
    assert first["vqascore"] is None and first["sampler_stats"]["sampler"] == "summed_velocity"
    assert np.array_equal(np.asarray(Image.open(out_a / "image.png")), np.asarray(Image.open(out_b / "image.png")))

"""regional_t2i end to end with the tiny preset: regional FLUX experts x VQAScore."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.tasks.image_bundles import HEIGHT, WIDTH, regional_bundle
from poe_backend.sampling.resampling import chosen_particle
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
    # the image is the particle with the highest final VQAScore (the paper's output)
    chosen, scores = manifest["chosen_index"], manifest["particle_scores"]
    assert len(scores) == 3 and chosen == int(np.argmax(scores)) and manifest["selected_by"] == "highest VQAScore"
    assert np.array_equal(particles["images"][chosen], np.asarray(Image.open(out / "image.png")))
    assert set(manifest["vqascore"]) == {"a park", "a dog", "a cat"}
    assert all(0 < score < 1 for scores in manifest["vqascore"].values() for score in scores)
    assert manifest["skipped_regions"] == ["bird"]
    # what each expert acted on: the global expert everywhere, each region on its box's tokens
    assert set(manifest["expert_inputs"]) == {"global", "region0", "region1"}
    maps = {name: np.asarray(Image.open(out / manifest["outputs"][inputs["weight_map"]])) / 255.0 for name, inputs in manifest["expert_inputs"].items()}
    assert np.allclose(maps["global"] + maps["region0"] + maps["region1"], 1.0, atol=2 / 255)  # Σλ = 1 on every token
    assert maps["region0"][0, 0] > 0.5 and maps["region0"][-1, -1] == 0.0
    assert manifest["sampler_stats"]["expert_calls"] == [3, 3, 3]  # start, Langevin step, transport; none at t=0
    assert manifest["sampler_stats"]["resample_count"] >= 1  # ess_threshold 1 resamples


def test_draw_selection_and_conditioned_regions(tmp_path):
    """select=draw hands out the particle drawn by weight with the seed; cond_weight > 0
    aligns each region expert to the global one (a backward per region evaluation)."""
    progress = []
    bundle = regional_bundle(tmp_path / "bundle")
    task = get_task("regional_t2i")
    context = TaskContext(bundle=bundle, params=task.Params(**FAST, select="draw", cond_weight=0.1), out_dir=tmp_path / "out", models="tiny", callback=progress.append)
    context.out_dir.mkdir()
    manifest = task.run(context).manifest
    log_weights = torch.tensor(manifest["log_weights"], dtype=torch.float64)
    assert manifest["chosen_index"] == chosen_particle(log_weights, manifest["seed"]) and manifest["selected_by"] == "drawn by weight"
    # global + 2 regions, each region a conditioned child: 1 + 2 × 3 forward-equivalents per round
    assert progress[-1].forwards == progress[-1].planned_forwards == progress[-1].nfe // 3 * 7


def test_conditioned_regions_are_planned_as_a_backward_through_dev(tmp_path):
    """The planner is told that [dev] carries a conditioned child's backward: it sizes that
    pass and refuses to stream the model (a backward through group offload fails)."""
    with pytest.raises(ValueError, match="cond_weight"):
        run(tmp_path, "streamed", {**FAST, "cond_weight": 0.1, "offload": "group"})


def test_flux_baseline_and_determinism(tmp_path):
    params = {**FAST, "method": "flux", "particles": 2}
    first, out_a = run(tmp_path, "a", params)
    _, out_b = run(tmp_path, "b", params)
    assert first["vqascore"] is None and first["sampler_stats"]["sampler"] == "summed_velocity"
    assert np.array_equal(np.asarray(Image.open(out_a / "image.png")), np.asarray(Image.open(out_b / "image.png")))


def test_layout_parser_parses_json_and_runs_without_boxes(tmp_path):
    from poe_backend.families.vqascore.layout import parse_layout

    answer = 'Sure: [{"prompt": "a dog", "box": [-5, 0, 20.4, 30]}, {"prompt": "", "box": [0, 0, 1, 1]}, {"prompt": "a cat", "box": [30, 30, 30, 40]}, {"prompt": "sky", "box": [0, 0, 48, 10]}]'
    assert parse_layout(answer, WIDTH, HEIGHT) == [("a dog", [0, 0, 20, 30]), ("sky", [0, 0, 48, 10])]
    assert parse_layout("no json here", WIDTH, HEIGHT) == [] and parse_layout("[not json]", WIDTH, HEIGHT) == []
    bundle = regional_bundle(tmp_path / "b", prompt="a dog under the sky")
    for obj in bundle.objects:
        object.__setattr__(obj, "bbox_px", [None])
    task = get_task("regional_t2i")
    out = tmp_path / "out"
    out.mkdir()
    params = task.Params(**{**FAST, "layout_parser": True, "vqascore": False, "particles": 1})
    result = task.run(TaskContext(bundle=bundle, params=params, out_dir=out, models="tiny"))
    assert isinstance(result.manifest["layout_parser"]["answer"], str)
    assert result.manifest["skipped_regions"] == ["dog", "cat", "bird"]


def test_vqascore_twists_decode_all_particles_once_at_the_reduced_size(tmp_path, monkeypatch):
    from poe_backend.families.flux.runtime import FluxLatentSpace
    from poe_backend.families.vqascore.scorer import VQAScorer

    decodes, scored = [], []
    original_decode, original_score = FluxLatentSpace.decode, VQAScorer.log_prob_yes
    monkeypatch.setattr(FluxLatentSpace, "decode", lambda space, packed, **options: decodes.append(options) or original_decode(space, packed, **options))
    monkeypatch.setattr(VQAScorer, "log_prob_yes", lambda scorer, images, prompt: scored.append(tuple(images.shape)) or original_score(scorer, images, prompt))
    manifest, _ = run(tmp_path, "preview-decode", {**FAST, "vqa_max_pixels": 28 * 28})
    twists = [options for options in decodes if options.get("max_pixels") == 28 * 28]
    assert len(twists) == len(scored) // 3 and len(twists) >= 3  # one decode per twist, three prompts scored on it
    assert set(scored) == {(3, 3, 16, 32)}  # all particles at once, 16 x 32 <= 28² pixels, not 32 x 48
    assert manifest["placement"]["placements"] == {"flux.transformer.dev": "resident"}

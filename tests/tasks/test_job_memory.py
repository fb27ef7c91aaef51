"""Proofs for issue 9's memory rules with tiny models (CPU): no placement moves a whole model
per evaluation; jobs evict what the next job does not use, keeping one copy per weights."""

from __future__ import annotations

import gc
import json

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKLHunyuanVideo, AutoencoderKLWan, FluxTransformer2DModel, HunyuanVideoFramepackTransformer3DModel, WanTransformer3DModel,
    WanVACETransformer3DModel,
)
from transformers import LlamaModel, UMT5EncoderModel
from diffusers.hooks import group_offloading
from PIL import Image

from poe_backend.bundle import read_bundle
from poe_backend.runtime.cache import MODEL_CACHE
from poe_backend.runtime import planner
from poe_backend.runtime.planner import Budget
from poe_backend.tasks import get_task
from poe_backend.tasks.base import TaskContext
from tests.tasks.image_bundles import insertion_bundle, regional_bundle
from tests.video_support import write_video_bundle

FAST = {"levels": 3, "langevin_steps": 1, "particles": 2, "max_sequence_length": 16}


def run_insertion(tmp_path, name: str, params: dict | None = None):
    task = get_task("insertion")
    out = tmp_path / f"out-{name}"
    out.mkdir()
    task.run(TaskContext(bundle=insertion_bundle(tmp_path / f"bundle-{name}"), params=task.Params(**{**FAST, **(params or {})}), out_dir=out, models="tiny")).write(out)
    return json.loads((out / "result.json").read_text()), np.asarray(Image.open(out / "raw.png"))


@pytest.fixture
def one_transformer_budget(monkeypatch):
    """A device budget that holds one tiny FLUX transformer (plus activations) but not two."""
    MODEL_CACHE.clear()
    size = planner.installed_size("flux.transformer.depth", "tiny").weight_bytes
    budget = Budget(vram_free_bytes=planner.GiB + int(1.5 * size) + 2**26, ram_free_bytes=2**34)  # the planner reserves 1 GiB
    monkeypatch.setattr(planner, "device_budget", lambda device: budget)
    monkeypatch.setattr(planner, "flux_activation_bytes", lambda tokens, text_tokens, batch, **_: 2**26)
    monkeypatch.setattr(planner, "vae_decode_bytes", lambda *args, **kwargs: 0)
    yield
    MODEL_CACHE.clear()


def test_auto_plan_streams_blocks_and_never_moves_a_whole_transformer_per_evaluation(tmp_path, monkeypatch, one_transformer_budget):
    moves, onloads = [], []
    original_to, original_onload = torch.nn.Module.to, group_offloading.ModuleGroup.onload_

    def counting_to(module, *args, **kwargs):
        if isinstance(module, FluxTransformer2DModel):
            moves.append(args or kwargs)
        return original_to(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", counting_to)
    monkeypatch.setattr(group_offloading.ModuleGroup, "onload_", lambda group: onloads.append(group) or original_onload(group))
    manifest, streamed = run_insertion(tmp_path, "auto")
    evaluations = sum(manifest["sampler_stats"]["expert_calls"].values())
    placements = manifest["placement"]["placements"]
    assert set(placements) == {"flux.transformer.depth", "flux.transformer.fill"}
    assert "group_offload" in placements.values() and set(placements.values()) <= {"resident", "group_offload"}  # both do not fit: stream, never swap
    assert evaluations >= 8 and len(moves) <= 4  # load + place once per transformer, never per evaluation
    blocks = sum(len(MODEL_CACHE.load(role, "tiny").transformer_blocks) for role in ("flux.transformer.depth", "flux.transformer.fill"))
    assert len(onloads) >= evaluations // 2 * blocks  # block groups stream in at every forward
    monkeypatch.setattr(torch.nn.Module, "to", original_to)
    resident, same = run_insertion(tmp_path, "resident", {"offload": "none"})
    assert set(resident["placement"]["placements"].values()) == {"resident"}
    assert np.array_equal(streamed, same)  # streaming changes memory, not results
    assert resident["memory"]["peak_host_rss_bytes"] > 0 and resident["memory"]["peak_device_bytes"] is None


def _live(cls: type) -> list[torch.nn.Module]:
    gc.collect()
    return [obj for obj in gc.get_objects() if type(obj) is cls]


def _copies(models: list[torch.nn.Module]) -> dict[int, int]:
    """Live instances per weight set (told apart by the FLUX input width: dev 64, depth 128, fill 384)."""
    counts: dict[int, int] = {}
    for model in models:
        counts[model.config.in_channels] = counts.get(model.config.in_channels, 0) + 1
    return counts


def _run_video(tmp_path, task_name: str, name: str, params: dict) -> dict:
    task = get_task(task_name)
    bundle = write_video_bundle(tmp_path / f"bundle-{name}", task_name, num_frames=9 if task_name == "sim2video_ar" else 6, with_depth=task_name == "sim2video")
    out = tmp_path / f"out-{name}"
    out.mkdir()
    return task.run(TaskContext(bundle=read_bundle(bundle), params=task.Params(**params), out_dir=out, models="tiny")).manifest


#: Every class of big model the chain loads; at most one live instance per weights.
VIDEO_CLASSES = (WanTransformer3DModel, WanVACETransformer3DModel, HunyuanVideoFramepackTransformer3DModel, AutoencoderKLWan, AutoencoderKLHunyuanVideo, UMT5EncoderModel, LlamaModel)


def _video_counts() -> dict[str, int]:
    gc.collect()
    counts = {cls.__name__: 0 for cls in VIDEO_CLASSES}
    for obj in gc.get_objects():
        if type(obj) in VIDEO_CLASSES:
            counts[type(obj).__name__] += 1
    return counts


def test_insertion_then_video_jobs_then_insertion_keep_one_copy_per_weights(tmp_path):
    """insertion → sim2video → sim2video → sim2video_ar → insertion in one process: each
    job keeps the models its ``model_roles`` name (the second sim2video reuses the very
    same Wan transformers and VAE), evicts the others before it loads, and no weights are
    ever loaded twice; text encoders are gone after encoding."""
    MODEL_CACHE.clear()
    run_insertion(tmp_path, "first")
    assert _copies(_live(FluxTransformer2DModel)) == {128: 1, 384: 1}

    video_params = {"levels": 2, "langevin_steps": 1, "particles": 1, "save_particles": False}
    first = _run_video(tmp_path, "sim2video", "video-1", video_params)
    assert _live(FluxTransformer2DModel) == []  # the insertion models were evicted before the video job
    counts = _video_counts()
    assert counts["WanTransformer3DModel"] == counts["WanVACETransformer3DModel"] == counts["AutoencoderKLWan"] == 1
    assert counts["UMT5EncoderModel"] == 0  # released after encoding
    kept = {id(model) for model in _live(WanTransformer3DModel) + _live(WanVACETransformer3DModel) + _live(AutoencoderKLWan)}
    assert any("transformer_fill" in path for path in first["memory"]["evicted_before"])

    second = _run_video(tmp_path, "sim2video", "video-2", {**video_params, "prompt": "another prompt"})
    assert {id(model) for model in _live(WanTransformer3DModel) + _live(WanVACETransformer3DModel) + _live(AutoencoderKLWan)} == kept
    assert not any("transformer" in path for path in second["memory"]["evicted_before"])  # kept across the two video jobs
    assert _video_counts()["UMT5EncoderModel"] == 0

    ar = _run_video(tmp_path, "sim2video_ar", "video-ar", {**video_params, "latent_window_size": 1, "gibbs_sweeps": 0})
    counts = _video_counts()
    assert counts["WanTransformer3DModel"] == counts["WanVACETransformer3DModel"] == counts["AutoencoderKLWan"] == 0
    assert counts["HunyuanVideoFramepackTransformer3DModel"] == counts["AutoencoderKLHunyuanVideo"] == 1 and counts["LlamaModel"] == 0
    assert any("transformer_i2v" in path for path in ar["memory"]["evicted_before"])

    again, _ = run_insertion(tmp_path, "second")
    assert _video_counts() == {cls.__name__: 0 for cls in VIDEO_CLASSES}
    assert _copies(_live(FluxTransformer2DModel)) == {128: 1, 384: 1}
    assert any(path.endswith("transformer") for path in again["memory"]["evicted_before"])  # FramePack's (weights at the root of its folder)
    MODEL_CACHE.clear()


def _live_model_bytes(device: str = "cpu") -> int:
    """Bytes of every live diffusers/transformers model's tensors on ``device`` (each
    storage once), found by the garbage collector: what the device really holds, whoever
    references the models."""
    from diffusers import ModelMixin
    from transformers import PreTrainedModel

    gc.collect()
    storages: dict[int, int] = {}
    for obj in gc.get_objects():
        if issubclass(type(obj), (ModelMixin, PreTrainedModel)):
            for tensor in [*obj.parameters(), *obj.buffers()]:
                if tensor.device.type == device:
                    storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    return sum(storages.values())


def test_a_job_sequence_never_exceeds_a_small_device_budget(tmp_path, monkeypatch):
    """insertion → regional_t2i → regional_t2i with a new prompt → sim2video → insertion
    under a device budget that holds the largest job's models (FLUX VAE + [dev] + Qwen2.5-VL)
    but not those plus the text encoders: the third job's new prompt needs T5 and CLIP beside
    the models kept from the second (the 24 GB card's CUDA OOM), so the cache must evict
    before it loads. Measured after every load from the live models, independently of the
    cache's own count."""
    from poe_backend.runtime import cache
    from poe_backend.runtime.cache import MODEL_CACHE

    MODEL_CACHE.clear()
    budget = 900_000  # tiny presets, fp32: 875 kB for the regional job's models, 956 kB with its encoders
    measured: list[int] = []
    original = cache._from_pretrained

    def observed(*args, **kwargs):
        component = original(*args, **kwargs)
        measured.append(_live_model_bytes())
        return component

    monkeypatch.setattr(cache, "_from_pretrained", observed)
    MODEL_CACHE.set_budget("cpu", budget)
    MODEL_CACHE.peak_bytes.clear()
    try:
        run_insertion(tmp_path, "first")
        regional = {**FAST, "vqa_max_pixels": 56 * 56}
        for name, prompt in (("regional-1", "a park"), ("regional-2", "a beach at dawn")):
            task = get_task("regional_t2i")
            out = tmp_path / f"out-{name}"
            out.mkdir()
            task.run(TaskContext(bundle=regional_bundle(tmp_path / f"bundle-{name}", prompt=prompt), params=task.Params(**regional), out_dir=out, models="tiny"))
        _run_video(tmp_path, "sim2video", "video", {"levels": 2, "langevin_steps": 1, "particles": 1, "save_particles": False})
        run_insertion(tmp_path, "last")
    finally:
        MODEL_CACHE.set_budget("cpu", None)
        MODEL_CACHE.clear()
    assert len(measured) > 20 and max(measured) > budget * 0.8  # the budget binds: the jobs came close to it
    assert max(measured) <= budget
    assert MODEL_CACHE.peak_bytes["cpu"] <= budget

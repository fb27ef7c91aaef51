"""The model cache: one instance per weights whatever the placement, eviction, release."""

from __future__ import annotations

import gc
import weakref

import torch

import pytest

from poe_backend.runtime.cache import MODEL_CACHE, DeviceMemoryError, ModelCache
from poe_backend.runtime.placement import parameter_bytes, placement_of


def test_one_instance_per_weights_whatever_the_placement():
    cache = ModelCache()
    resident = cache.place("flux.transformer.depth", "tiny", "resident", "cpu")
    streamed = cache.place("flux.transformer.depth", "tiny", "group_offload", "cpu")
    assert streamed is resident and placement_of(streamed) == "group_offload"
    assert cache.load("flux.transformer.depth", "tiny", device="cpu") is resident  # keeps its hooks
    assert len(cache.loaded_models()) == 1
    other_dtype = cache.load("flux.transformer.depth", "tiny", dtype=torch.float64)
    assert other_dtype is not resident and len(cache.loaded_models()) == 1  # same path, two dtypes
    fp8 = cache.place("flux.transformer.depth", "tiny", "fp8_resident", "cpu")
    assert fp8 is not resident and placement_of(fp8) == "fp8_resident"  # reloaded: casting is not undone in place


def test_begin_job_frees_the_other_models():
    cache = ModelCache()
    dev = weakref.ref(cache.load("flux.transformer.dev", "tiny"))
    depth = cache.load("flux.transformer.depth", "tiny")
    dropped = cache.begin_job(["flux.transformer.depth", "flux.vae"], "tiny")
    gc.collect()
    assert dev() is None and len(dropped) == 1 and dropped[0].endswith("transformer_dev")
    assert cache.load("flux.transformer.depth", "tiny") is depth


def _bytes(role: str) -> int:
    return parameter_bytes(MODEL_CACHE.load(role, "tiny"))


def test_a_load_evicts_least_recently_used_models_the_job_has_not_used():
    """ComfyUI's free_memory(required, device): before a load, models of earlier jobs go,
    oldest first, until the load and the reserve fit; the job's own models stay."""
    sizes = {role: _bytes(role) for role in ("flux.transformer.dev", "flux.transformer.depth", "flux.transformer.fill", "flux.vae")}
    cache = ModelCache()
    dev = cache.load("flux.transformer.dev", "tiny")
    cache.load("flux.transformer.depth", "tiny")
    cache.load("flux.transformer.dev", "tiny")  # used again: depth is now the least recent
    cache.begin_job(["flux.transformer.dev", "flux.transformer.depth", "flux.transformer.fill", "flux.vae"], "tiny")
    vae = cache.load("flux.vae", "tiny")  # used by this job: never evicted
    reserve = 1000
    cache.set_budget("cpu", sizes["flux.transformer.dev"] + sizes["flux.vae"] + sizes["flux.transformer.fill"] + reserve, reserve_bytes=reserve)
    fill = cache.load("flux.transformer.fill", "tiny")
    assert [path.rsplit("/", 1)[-1] for path in cache.loaded_models()] == ["transformer_dev", "transformer_fill", "vae"]
    assert cache.device_bytes("cpu") + reserve <= cache.budget("cpu").total_bytes
    assert cache.peak_bytes["cpu"] <= cache.budget("cpu").total_bytes - reserve
    cache.set_budget("cpu", sizes["flux.vae"] + sizes["flux.transformer.fill"] + sizes["flux.transformer.depth"] + reserve, reserve_bytes=reserve)
    cache.load("flux.transformer.depth", "tiny")  # dev (earlier job, unused now) goes; vae and fill are this job's
    assert all(parameter.is_meta for parameter in dev.parameters())  # its memory came back although referenced here
    assert not any(parameter.is_meta for module in (vae, fill) for parameter in module.parameters())
    with pytest.raises(DeviceMemoryError, match="flux.transformer.dev"):
        cache.load("flux.transformer.dev", "tiny")  # nothing left to evict: named, not an OOM
    cache.clear()


def test_encoders_fall_back_to_the_cpu_when_they_cannot_fit():
    cache = ModelCache()
    cache.set_budget("meta", 1000)  # a device where nothing fits
    (encoder, tokenizer), device = cache.load_encoders(["flux.text_encoder_2", "flux.tokenizer_2"], "tiny", device="meta", dtype=torch.float32)
    assert device == "cpu" and next(encoder.parameters()).device.type == "cpu" and tokenizer is not None
    cache.clear()


def test_give_back_frees_a_module_that_is_still_referenced():
    """Before a decode that does not fit beside the sampling models, their memory must come
    back although the job's experts still hold the modules."""
    from poe_backend.models import lookup
    from poe_backend.runtime.cache import MODEL_CACHE

    MODEL_CACHE.clear()
    held = MODEL_CACHE.load("flux.transformer.depth", "tiny")
    MODEL_CACHE.give_back("flux.transformer.depth", "tiny")
    assert all(parameter.is_meta for parameter in held.parameters())
    assert str(lookup.resolve("flux.transformer.depth", "tiny")) not in MODEL_CACHE.loaded_models()
    again = MODEL_CACHE.load("flux.transformer.depth", "tiny")
    assert again is not held and not next(again.parameters()).is_meta  # the next job loads it afresh
    MODEL_CACHE.clear()


def test_give_back_leaves_a_streamed_module_as_it_is():
    """A group-offloaded module holds no device memory between forwards (its weights live on
    the host) and diffusers refuses ``.to`` on it: give_back only drops it from the cache."""
    from poe_backend.models import lookup

    MODEL_CACHE.clear()
    streamed = MODEL_CACHE.place("flux.transformer.depth", "tiny", "group_offload", "cpu")
    MODEL_CACHE.give_back("flux.transformer.depth", "tiny")
    assert placement_of(streamed) == "group_offload" and not next(streamed.parameters()).is_meta
    assert str(lookup.resolve("flux.transformer.depth", "tiny")) not in MODEL_CACHE.loaded_models()
    MODEL_CACHE.clear()


def test_nothing_is_evicted_when_even_evicting_everything_would_not_make_room():
    cache = ModelCache()
    dev = cache.load("flux.transformer.dev", "tiny")
    cache.begin_job(["flux.transformer.dev", "flux.transformer.fill"], "tiny")
    cache.set_budget("cpu", parameter_bytes(dev) + 1000)  # fill alone does not fit, with or without dev
    with pytest.raises(DeviceMemoryError, match="flux.transformer.fill"):
        cache.load("flux.transformer.fill", "tiny")
    assert not any(parameter.is_meta for parameter in dev.parameters())  # kept: evicting it would not have helped
    assert cache.free_memory(10**9, "cpu") == [] and len(cache.loaded_models()) == 1
    cache.clear()


def test_a_change_of_fp8_storage_evicts_the_old_copy_before_loading_the_new():
    cache = ModelCache()
    old = cache.place("flux.transformer.depth", "tiny", "resident", "cpu")
    new = cache.place("flux.transformer.depth", "tiny", "fp8_resident", "cpu")
    assert new is not old and all(parameter.is_meta for parameter in old.parameters())
    assert placement_of(new) == "fp8_resident" and len(cache.loaded_models()) == 1
    cache.clear()


def test_begin_job_drops_another_presets_copy_of_a_needed_role(tmp_path):
    """A job with models of one preset does not keep another preset's files of the same role."""
    import json
    import shutil

    from poe_backend.models import lookup

    copy = tmp_path / "dev-copy"
    shutil.copytree(lookup.resolve("flux.transformer.dev", "tiny"), copy)
    preset = tmp_path / "copy.json"
    preset.write_text(json.dumps({"base": "tiny", "roles": {"flux.transformer.dev": {"local_dir": str(copy)}}}))
    cache = ModelCache()
    tiny = weakref.ref(cache.load("flux.transformer.dev", "tiny"))
    cache.load("flux.transformer.dev", str(preset))
    dropped = cache.begin_job(["flux.transformer.dev"], str(preset))
    gc.collect()
    assert tiny() is None and cache.loaded_models() == [str(copy)] and len(dropped) == 1
    cache.clear()


def test_planning_evicts_the_models_it_counted_as_free():
    """The plan counts models of earlier jobs that this job has not used as free memory; the
    cache must then really free them, or the job runs out of memory during sampling."""
    from poe_backend.families.flux import runtime as flux
    from poe_backend.runtime.planner import GiB, Budget

    MODEL_CACHE.clear()
    earlier = MODEL_CACHE.load("flux.transformer.dev", "tiny")
    MODEL_CACHE.begin_job(["flux.vae", "flux.transformer.dev", "flux.transformer.depth"], "tiny")
    runtime = flux.FluxRuntime(48, 48, preset="tiny", max_sequence_length=16, budget=Budget(vram_free_bytes=64 * GiB, ram_free_bytes=64 * GiB))
    runtime.plan(["depth"])
    assert all(parameter.is_meta for parameter in earlier.parameters())  # counted as free, and freed
    assert not any(parameter.is_meta for parameter in runtime.space.vae.parameters())  # the job's own VAE stays
    MODEL_CACHE.clear()

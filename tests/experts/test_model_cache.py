"""The model cache: one instance per weights whatever the placement, eviction, release."""

from __future__ import annotations

import gc
import weakref

import torch

from poe_backend.experts.model_cache import MODEL_CACHE, ModelCache
from poe_backend.experts.placement import placement_of


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


def test_ensure_only_frees_the_other_models():
    cache = ModelCache()
    dev = weakref.ref(cache.load("flux.transformer.dev", "tiny"))
    depth = cache.load("flux.transformer.depth", "tiny")
    dropped = cache.ensure_only(["flux.transformer.depth", "flux.vae"])
    gc.collect()
    assert dev() is None and len(dropped) == 1 and dropped[0].endswith("transformer_dev")
    assert cache.load("flux.transformer.depth", "tiny") is depth


def test_evict_lru_drops_least_recently_used_until_the_budget_holds():
    cache = ModelCache()
    cache.load("flux.transformer.dev", "tiny")
    cache.load("flux.transformer.depth", "tiny")
    fill = cache.load("flux.transformer.fill", "tiny")
    cache.load("flux.transformer.dev", "tiny")  # used again: now the most recent
    budget = cache.cached_bytes() - 1
    dropped = cache.evict_lru(budget, keep=["flux.transformer.fill"])
    assert [path.rsplit("/", 1)[-1] for path in dropped] == ["transformer_depth"]
    assert cache.load("flux.transformer.fill", "tiny") is fill
    assert cache.evict_lru(0, keep=["flux.transformer.fill"]) and cache.cached_bytes() > 0


def test_give_back_frees_a_module_that_is_still_referenced():
    """Before a decode that does not fit beside the sampling models, their memory must come
    back although the job's experts still hold the modules."""
    from poe_backend.experts import registry

    registry.clear_cache()
    held = MODEL_CACHE.load("flux.transformer.depth", "tiny")
    MODEL_CACHE.give_back("flux.transformer.depth", "tiny")
    assert all(parameter.is_meta for parameter in held.parameters())
    assert str(registry.resolve("flux.transformer.depth", "tiny")) not in MODEL_CACHE.loaded_models()
    again = MODEL_CACHE.load("flux.transformer.depth", "tiny")
    assert again is not held and not next(again.parameters()).is_meta  # the next job loads it afresh
    registry.clear_cache()


def test_give_back_leaves_a_streamed_module_as_it_is():
    """A group-offloaded module holds no device memory between forwards (its weights live on
    the host) and diffusers refuses ``.to`` on it: give_back only drops it from the cache."""
    from poe_backend.experts import registry

    registry.clear_cache()
    streamed = MODEL_CACHE.place("flux.transformer.depth", "tiny", "group_offload", "cpu")
    MODEL_CACHE.give_back("flux.transformer.depth", "tiny")
    assert placement_of(streamed) == "group_offload" and not next(streamed.parameters()).is_meta
    assert str(registry.resolve("flux.transformer.depth", "tiny")) not in MODEL_CACHE.loaded_models()
    registry.clear_cache()

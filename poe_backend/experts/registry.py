"""The model registry's API in one import (a facade; the work is done in four modules).

* :mod:`~poe_backend.experts.specs` — what a role is: :class:`ModelSpec`, presets, families,
  :class:`MissingWeights`.
* :mod:`~poe_backend.experts.lookup` — where its files are: :func:`resolve`,
  :func:`check_available`, :func:`weight_bytes`.
* :mod:`~poe_backend.experts.model_cache` — loaded instances, one per weights (path, dtype)
  whatever the device or placement; LRU eviction (``MODEL_CACHE.ensure_only``,
  ``evict_lru``); :func:`load`, :func:`release`.
* :mod:`~poe_backend.experts.memory_plan` — the one place that decides placements, from
  exact sizes (configs on the meta device), activations, decode and free memory.
* :mod:`~poe_backend.experts.placement` — applying a decision to a module
  (``apply_placement``) and the ``offload`` task presets (``placement_for_offload``).

New code may import those modules directly; there is no whole-model offload (it moved a
model at every evaluation) and group offload pins no second host copy.
"""

from __future__ import annotations

from poe_backend.experts.lookup import check_available, hub_search_paths, resolve, weight_bytes
from poe_backend.experts.model_cache import MODEL_CACHE, default_dtype
from poe_backend.experts.placement import OFFLOAD_PRESETS, parameter_bytes
from poe_backend.experts.specs import (
    BUILTIN_PRESETS,
    Components,
    MissingWeights,
    ModelSpec,
    data_dir,
    families,
    get_spec,
    hub_specs,
    preset_names,
    register_family,
    roles_of,
    temporary_env,
    tiny_dir,
    tiny_specs,
)

load = MODEL_CACHE.load
release = MODEL_CACHE.release
clear_cache = MODEL_CACHE.clear
loaded_models = MODEL_CACHE.loaded_models

__all__ = [
    "BUILTIN_PRESETS", "Components", "MODEL_CACHE", "MissingWeights", "ModelSpec", "OFFLOAD_PRESETS",
    "check_available", "clear_cache", "data_dir", "default_dtype", "families", "get_spec",
    "hub_search_paths", "hub_specs", "load", "loaded_models", "parameter_bytes", "preset_names", "register_family",
    "release", "resolve", "roles_of", "temporary_env", "tiny_dir", "tiny_specs", "weight_bytes",
]

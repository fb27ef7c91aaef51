"""Fixtures for the tasks: the shared model data directory (tests/model_data.py); tiny bundles
are written with PIL and OpenEXR (no Blender) by the helpers next to this file."""

import gc

import pytest

from poe_backend.runtime.cache import MODEL_CACHE
from tests.model_data import poe_data_dir  # noqa: F401


@pytest.fixture(scope="package", autouse=True)
def imports_frozen_out_of_the_collector():
    """``gc.freeze()`` every object alive when the task tests start: the ~440k objects of
    torch, diffusers and transformers (imported while collecting) that each full
    ``gc.collect`` walks again. The model cache collects whenever it frees a model
    (``empty_caches``), as do the memory tests' own counts, so that walk cost 0.3-0.4 s a time,
    up to 80 times a test; frozen, a collection walks only what the tests built since (ms).
    The cache is emptied first, so no model is frozen: every model a task test loads stays
    visible to ``gc.get_objects`` and collectable. Unfrozen afterwards."""
    MODEL_CACHE.clear()
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()

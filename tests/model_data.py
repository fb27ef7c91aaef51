"""The session data directory every test package that loads models shares as a fixture: the
tiny families are built there once (``save_pretrained``) and then loaded through the real
``from_pretrained`` path."""

from __future__ import annotations

import pytest

from poe_backend.models import specs
from poe_backend.runtime.cache import MODEL_CACHE


@pytest.fixture(scope="session", autouse=True)
def poe_data_dir(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("poe-data")
    with specs.temporary_env(POE_DATA_DIR=str(directory), HF_HUB_OFFLINE="1"):
        yield directory
    MODEL_CACHE.clear()

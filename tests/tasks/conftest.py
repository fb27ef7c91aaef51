"""Fixtures for the image tasks: a session data directory (tiny models built once) and tiny
bundles written with PIL and OpenEXR (no Blender)."""

from __future__ import annotations

import pytest

from poe_backend.experts import registry


@pytest.fixture(scope="session", autouse=True)
def poe_data_dir(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("poe-data")
    with registry.temporary_env(POE_DATA_DIR=str(directory), HF_HUB_OFFLINE="1"):
        yield directory
    registry.clear_cache()

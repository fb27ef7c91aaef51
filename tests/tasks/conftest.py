"""Fixtures for the tasks: the shared model data directory (tests/model_data.py); tiny bundles
are written with PIL and OpenEXR (no Blender) by the helpers next to this file."""

from tests.model_data import poe_data_dir  # noqa: F401

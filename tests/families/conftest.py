"""Fixtures: the shared model data directory (tests/model_data.py)."""

from tests.model_data import poe_data_dir  # noqa: F401

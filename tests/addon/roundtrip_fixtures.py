"""The real backend for the add-on round-trip tests (same launcher as tests/server);
imported by the test modules (not a conftest, so it cannot clash with other add-on tests)."""

from __future__ import annotations

import pytest

from tests.server.conftest import start_backend


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("addon-backend")
    (root / "data").mkdir()
    running = start_backend(root / "data", "--max-upload-mb", "64")
    yield running
    running.stop()

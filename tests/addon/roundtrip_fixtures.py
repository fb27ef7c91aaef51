"""The real backend for the add-on round-trip tests (same launcher as tests/server);
imported by the test modules (not a conftest, so it cannot clash with other add-on tests).
The function has its own name and the fixture is called ``backend``: a test's ``backend``
parameter then does not shadow the imported name (pyflakes' F811)."""

from __future__ import annotations

import pytest

from tests.server.conftest import start_backend


@pytest.fixture(scope="module", name="backend")
def backend_fixture(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("addon-backend")
    (root / "data").mkdir()
    running = start_backend(root / "data", "--max-upload-mb", "64")
    yield running
    running.stop()

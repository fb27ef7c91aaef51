"""The repository passes ``ruff check`` with the settings in pyproject.toml ([tool.ruff]);
ruff comes with the ``test`` extra (``pip install -e .[test]``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_check_passes() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"ruff check failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"

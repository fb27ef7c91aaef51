"""The GPU benchmark's tiny path runs on the CPU and prints a table (its smoke mode)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_benchmark_table(capsys):
    spec = importlib.util.spec_from_file_location("gpu_tasks_under_test", ROOT / "benchmarks" / "gpu_tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--tiny", "--task", "insertion", "--offload", "none", "--levels", "2", "--particles", "1"]) == 0
    output = capsys.readouterr().out
    assert "need a CUDA GPU" in output
    row = next(line for line in output.splitlines() if line.startswith("insertion"))
    assert "32x32" in row and "failed" not in row

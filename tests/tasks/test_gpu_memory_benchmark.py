"""The device check's memory rows (``benchmarks/gpu_memory.py``) in their CPU mode: two
insertion jobs with the tiny models under a device budget, one row printed per job, no error.
A subprocess, as ``gpu_check.sh`` runs it: the benchmark patches the model cache's loader and
sets a device budget, which must not leak into other tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_memory_benchmark_prints_a_row_per_job(tmp_path):
    env = {**os.environ, "POE_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_memory.py"), "--tiny", "--task", "insertion", "--card-gb", "24"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "NOT a GPU measurement" in done.stdout
    header = next(line for line in done.stdout.splitlines() if line.startswith("task | ")).split(" | ")
    rows = [dict(zip(header, line.split(" | "))) for line in done.stdout.splitlines() if line.startswith("insertion | ")]
    assert [row["job"] for row in rows] == ["1/2", "2/2"]
    for row in rows:
        assert row["status"] == "ok", row
        assert row["card"] == "24G" and set(row["placements"].split()) == {"depth=resident", "fill=resident"}
        assert row["plan VRAM/host/pinned"] != "-" and row["cache peak"] != "-"  # the planner planned against the budget; the cache kept its peak
        assert int(row["fwd"]) > 0 and float(row["s/fwd"]) > 0  # the transformers' forwards were counted and timed

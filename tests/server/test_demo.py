"""``poe-backend demo`` end to end: scene, bundle, backend, job, result in the .blend."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.server.conftest import REPO

pytestmark = [pytest.mark.blender, pytest.mark.slow]


@pytest.mark.parametrize(("arguments", "task", "models"), [([], "insertion", "no weights found"), (["--task", "toy2d"], "toy2d", "no models")])
def test_demo_round_trip(tmp_path, arguments, task, models):
    """The README's main command: without weights, insertion runs the tiny preset and says so."""
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "poe_backend", "demo", "--out", str(out), *arguments], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["facts"]["outcome"] == "done" and "cpu" in report["facts"]["ran_on"] and models in report["facts"]["models"]
    assert (out / "result.png").read_bytes().startswith(b"\x89PNG") and (out / "demo.blend").stat().st_size > 0
    assert "result loaded" in (out / "report.txt").read_text()
    check = "import bpy; bpy.ops.wm.open_mainfile(filepath=%r); print(sorted(o['poe_task'] for o in bpy.data.objects if 'poe_job_id' in o))" % str(out / "demo.blend")
    reopened = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert f"['{task}']" in reopened.stdout, reopened.stdout + reopened.stderr

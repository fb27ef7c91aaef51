"""``poe-backend demo`` end to end: scene, bundle, backend, job, result in the .blend."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.server.conftest import REPO

pytestmark = [pytest.mark.blender, pytest.mark.slow]


@pytest.mark.parametrize(("arguments", "task", "models"), [([], "insertion", "no weights found"), (["--task", "toy2d"], "toy2d", "no models")])
def test_demo_round_trip(tmp_path, arguments, task, models):
    """The README's main command: without weights, insertion runs the tiny preset and says so.
    It runs as installed: ``poe_backend`` importable and nothing else of the checkout (no
    repository root on sys.path: ``-P`` and another working directory), so the demo must
    find the add-on and the example scenes by itself, and must leave sys.path as bpy left
    it (importing bpy adds Blender's own script folders). The saved .blend is then opened
    from disk in the same process (a second Blender start costs ~2 s) and lists the job's
    result object."""
    out = tmp_path / "demo"
    installed = tmp_path / "site"
    installed.mkdir()
    (installed / "poe_backend").symlink_to(REPO / "poe_backend")
    environment = {**os.environ, "PYTHONPATH": str(installed)}
    demo = (
        "import sys, bpy; from poe_backend.cli import main; before = list(sys.path); "
        f"code = main(['demo', '--out', {str(out)!r}, *{arguments!r}]); print('sys.path kept:', sys.path == before); "
        f"bpy.ops.wm.open_mainfile(filepath={str(out / 'demo.blend')!r}); "
        "print('reopened:', sorted(o['poe_task'] for o in bpy.data.objects if 'poe_job_id' in o)); sys.exit(code)"
    )
    command = [sys.executable, "-P", "-c", demo]
    result = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sys.path kept: True" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["facts"]["outcome"] == "done" and "cpu" in report["facts"]["ran_on"] and models in report["facts"]["models"]
    assert (out / "result.png").read_bytes().startswith(b"\x89PNG") and (out / "demo.blend").stat().st_size > 0
    assert "result loaded" in (out / "report.txt").read_text()
    assert f"reopened: ['{task}']" in result.stdout, result.stdout

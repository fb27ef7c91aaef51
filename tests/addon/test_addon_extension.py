"""The extension zip builds and validates with Blender's own tool, installs into an isolated
user directory and enables (in a subprocess, so the isolated user folders apply)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.blender

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import build_extension  # noqa: E402

from conftest import python_with_bpy  # noqa: E402

ENABLE_SCRIPT = """
import os, subprocess, sys
zip_path, tool, repo_dir = sys.argv[sys.argv.index("--") + 1:]
import bpy, addon_utils
assert bpy.utils.resource_path("USER") == os.environ["BLENDER_USER_RESOURCES"]
os.makedirs(repo_dir)
subprocess.run([sys.executable, tool, "install-files", "--local-dir", repo_dir, zip_path], check=True)
bpy.context.preferences.extensions.repos.new(name="poe_test", module="poe_test", custom_directory=repo_dir, source="USER")
module = addon_utils.enable("bl_ext.poe_test.poe_generation", default_set=True, handle_error=None)
assert module is not None and module.__file__.startswith(repo_dir), module
assert "bl_ext.poe_test.poe_generation" in bpy.context.preferences.addons
from bl_ext.poe_test.poe_generation import prefs
assert prefs().backend_url == "http://127.0.0.1:7860"
assert bpy.context.scene.poe.task == "insertion" and hasattr(bpy.types, "POE_OT_capture")
addon_utils.disable("bl_ext.poe_test.poe_generation", default_set=True)
assert not hasattr(bpy.types, "POE_OT_capture")
print("ENABLED OK")
"""


def test_extension_builds_validates_installs_and_enables(tmp_path):
    zip_path = build_extension.build(tmp_path / "dist")
    assert zip_path.name == "poe_generation-0.1.0.zip"
    names = zipfile.ZipFile(zip_path).namelist()
    assert "blender_manifest.toml" in names and "capture/__init__.py" in names
    assert not any("__pycache__" in name for name in names)
    schema = zipfile.ZipFile(zip_path).read("bundle_schema.py")  # the symlink's target, copied
    assert schema == (ROOT / "poe_backend" / "bundle.py").read_bytes()
    user = tmp_path / "user"
    user.mkdir()
    environment = {**os.environ, "BLENDER_USER_RESOURCES": str(user)}
    script = tmp_path / "enable.py"
    script.write_text(ENABLE_SCRIPT)
    result = subprocess.run(
        python_with_bpy(str(script), str(zip_path), str(build_extension.find_blender_ext()), str(user / "repo")),
        capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=300,
    )
    assert "ENABLED OK" in result.stdout, result.stdout + result.stderr
    assert result.returncode == 0, f"exit status {result.returncode} after enabling (139: the bpy 4.2 exit segfault)\n{result.stderr}"

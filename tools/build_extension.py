"""Build the extension zip: ``python tools/build_extension.py [--output-dir dist]``.

Stages ``addon/`` (symlinks dereferenced, so the shared ``bundle_schema.py`` is copied in;
no ``__pycache__``) with ``blender_manifest.toml`` into a temporary folder, runs Blender's
own extension tool (``blender_ext.py build``, then ``validate`` on the zip) and prints the
zip's path, ``dist/<id>-<version>.zip``. The tool ships inside Blender (and the bpy wheel)
at ``<version>/scripts/addons_core/bl_pkg/cli/blender_ext.py``; it is found through the bpy
package, or given with ``--blender-ext`` / the ``BLENDER_EXT`` environment variable.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "blender_manifest.toml"


def find_blender_ext() -> Path:
    """``blender_ext.py`` from ``$BLENDER_EXT``, the running Blender, or the bpy package."""
    if os.environ.get("BLENDER_EXT"):
        return Path(os.environ["BLENDER_EXT"])
    if "bpy" in sys.modules:  # inside Blender (or bpy already imported)
        found = Path(sys.modules["bpy"].utils.resource_path("LOCAL")) / "scripts/addons_core/bl_pkg/cli/blender_ext.py"
        if found.is_file():
            return found
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("blender_ext.py not found: install bpy or set BLENDER_EXT")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
        if found:
            return found[-1]
    raise SystemExit("blender_ext.py not found under the bpy package; set BLENDER_EXT")


def run_tool(tool: Path, *arguments: str) -> str:
    """Run ``blender_ext.py`` with this Python; raise with its output when it fails."""
    result = subprocess.run([sys.executable, str(tool), *arguments], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"blender_ext {arguments[0]} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def stage(destination: Path) -> Path:
    """Copy the package files and the manifest into ``destination``."""
    shutil.copytree(ROOT / "addon", destination, symlinks=False, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(MANIFEST, destination / MANIFEST.name)
    return destination


def build(output_dir: str | Path = ROOT / "dist", *, tool: Path | None = None) -> Path:
    """Build and validate the zip; returns its path."""
    tool = tool or find_blender_ext()
    manifest = tomllib.loads(MANIFEST.read_text(encoding="utf-8"))
    output = Path(output_dir).resolve() / f"{manifest['id']}-{manifest['version']}.zip"
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="poe_extension_") as scratch:
        source = stage(Path(scratch) / manifest["id"])
        run_tool(tool, "validate", str(source))
        run_tool(tool, "build", "--source-dir", str(source), "--output-filepath", str(output))
    run_tool(tool, "validate", str(output))
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=str(ROOT / "dist"))
    parser.add_argument("--blender-ext", type=Path, default=None, help="path to blender_ext.py")
    arguments = parser.parse_args()
    print(build(arguments.output_dir, tool=arguments.blender_ext))


if __name__ == "__main__":
    main()

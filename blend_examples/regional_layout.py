"""Regional text-to-image: a layout of labelled objects; each ``poe_prompt`` custom property
is that region's prompt, and capture turns the objects' projected boxes into regions."""

from __future__ import annotations

from pathlib import Path

try:
    from . import _common
except ImportError:  # run as a script
    import _common

LAYOUT = [  # kind, name, location, size, prompt
    ("cube", "House", (-1.6, 1.0, 0.75), 1.5, "a small wooden cabin with a red door"),
    ("cone", "Tree", (1.8, 1.5, 1.0), 2.0, "a tall pine tree"),
    ("uv_sphere", "Balloon", (0.3, 2.5, 3.2), 0.6, "a hot air balloon"),
    ("cube", "Car", (0.6, -0.6, 0.3), 0.6, "a vintage blue car"),
]


def build(path: str | Path) -> Path:
    scene = _common.new_scene("regional_layout", width=1024, height=576)
    _common.primitive("plane", "Ground", size=20, color=(0.3, 0.5, 0.25))
    for kind, name, location, size, prompt in LAYOUT:
        extent = {"size": size} if kind == "cube" else {"radius": size / 2} if kind == "uv_sphere" else {"radius1": size / 3, "depth": size}
        _common.primitive(kind, name, location=location, prompt=prompt, color=(0.7, 0.7, 0.7), **extent)
    _common.add_camera(scene, (0.0, -8.0, 2.0), (0.0, 1.0, 1.2), lens=32)
    _common.add_sun(scene)
    scene["poe_prompt"] = "a sunny countryside scene"
    return _common.save(path)


if __name__ == "__main__":
    _common.main(build)

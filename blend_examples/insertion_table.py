"""Object insertion: a table against a wall, a can to insert on it, seen by a camera.

The can ("Can", ``poe_prompt`` "a red soda can") is the object to insert: capture renders
the plate without it, depth with it and its mask.
"""

from __future__ import annotations

from pathlib import Path

try:
    from . import _common
except ImportError:  # run as a script
    import _common


def build(path: str | Path) -> Path:
    scene = _common.new_scene("insertion_table", width=832, height=480)
    _common.primitive("plane", "Floor", size=20, color=(0.4, 0.35, 0.3))
    _common.primitive("plane", "Wall", size=20, location=(0, 3, 5), rotation=(1.5708, 0, 0), color=(0.7, 0.7, 0.65))
    top = _common.primitive("cube", "TableTop", size=1, location=(0, 0, 0.75), color=(0.45, 0.25, 0.1))
    top.scale = (1.6, 0.9, 0.05)
    for index, (x, y) in enumerate([(-0.7, -0.35), (0.7, -0.35), (-0.7, 0.35), (0.7, 0.35)]):
        leg = _common.primitive("cube", f"TableLeg{index}", size=1, location=(x, y, 0.36), color=(0.45, 0.25, 0.1))
        leg.scale = (0.06, 0.06, 0.72)
    _common.primitive("cylinder", "Can", radius=0.033, depth=0.12, location=(0.1, -0.05, 0.835),
                      color=(0.8, 0.05, 0.05), prompt="a red soda can")
    _common.add_camera(scene, (0.0, -2.2, 1.35), (0.0, 0.0, 0.8), lens=40)
    _common.add_sun(scene)
    return _common.save(path)


if __name__ == "__main__":
    _common.main(build)

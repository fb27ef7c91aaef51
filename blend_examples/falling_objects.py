"""Sim-to-video: balls and boxes falling and bouncing on the ground under rigid-body physics.

Frames 1-48 at 24 fps; the rigid-body cache covers the same range and is left unbaked
(capture fills it by frame stepping).
"""

from __future__ import annotations

from pathlib import Path

import bpy

try:
    from . import _common
except ImportError:  # run as a script
    import _common

BODIES = [  # kind, name, location, colour
    ("uv_sphere", "BallRed", (-0.8, 0.0, 2.0), (0.8, 0.1, 0.1)),
    ("uv_sphere", "BallBlue", (0.6, 0.4, 3.0), (0.1, 0.2, 0.8)),
    ("uv_sphere", "BallGreen", (0.1, -0.5, 4.0), (0.1, 0.7, 0.2)),
    ("cube", "BoxYellow", (0.9, -0.6, 2.5), (0.9, 0.8, 0.1)),
    ("cube", "BoxPurple", (-0.4, 0.7, 3.5), (0.5, 0.1, 0.6)),
]


def build(path: str | Path, *, frames: tuple[int, int] = (1, 48)) -> Path:
    scene = _common.new_scene("falling_objects", width=832, height=480, frames=frames)
    ground = _common.primitive("plane", "Ground", size=12, color=(0.5, 0.5, 0.5))
    add_rigid_body(scene, ground, "PASSIVE", shape="BOX", bounciness=0.5)
    for kind, name, location, color in BODIES:
        size = {"radius": 0.3} if kind == "uv_sphere" else {"size": 0.5}
        body = _common.primitive(kind, name, location=location, color=color, **size)
        add_rigid_body(scene, body, "ACTIVE", shape="SPHERE" if kind == "uv_sphere" else "BOX", bounciness=0.6)
    cache = scene.rigidbody_world.point_cache
    cache.frame_start, cache.frame_end = frames
    _common.add_camera(scene, (0.0, -9.0, 2.6), (0.0, 0.0, 1.7), lens=28)
    _common.add_sun(scene)
    return _common.save(path)


def add_rigid_body(scene, obj, kind: str, *, shape: str, bounciness: float, mass: float = 1.0) -> None:
    """Make ``obj`` a rigid body (creating the scene's rigid-body world if needed).
    ``bpy.ops.rigidbody`` needs an active object, given by a context override."""
    with bpy.context.temp_override(scene=scene, object=obj, active_object=obj, selected_objects=[obj]):
        if scene.rigidbody_world is None:
            bpy.ops.rigidbody.world_add()
        bpy.ops.rigidbody.object_add(type=kind)
    obj.rigid_body.collision_shape = shape
    obj.rigid_body.restitution = bounciness
    obj.rigid_body.mass = mass


if __name__ == "__main__":
    _common.main(build)

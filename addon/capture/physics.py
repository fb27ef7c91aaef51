"""Rigid-body simulation before capture, without operator context.

``bpy.ops.ptcache.bake_all`` needs a window context that bpy as a module (and a farm
worker) does not have. Stepping the scene one frame at a time from the cache's first
frame runs the same simulation and fills the point cache, which is what a bake stores; the
cache is not marked as baked, so the user's cache settings stay as they were. A cache the
user baked is left alone.
"""

from __future__ import annotations


def simulate_rigid_bodies(scene, last_frame: int) -> bool:
    """Fill the rigid-body cache up to ``last_frame`` (clipped to the cache's range) by
    frame stepping; returns ``True`` when it simulated. The caller restores the frame."""
    world = scene.rigidbody_world
    if world is None or not world.enabled or world.collection is None:
        return False
    cache = world.point_cache
    if cache.is_baked:
        return False
    start, end = cache.frame_start, min(cache.frame_end, last_frame)
    scene.frame_set(start)
    for frame in range(start + 1, end + 1):
        scene.frame_set(frame)
    return True


def rigid_body_frame_range(scene) -> tuple[int, int] | None:
    """The frames the rigid-body cache covers, or ``None`` without an enabled world."""
    world = scene.rigidbody_world
    if world is None or not world.enabled:
        return None
    return world.point_cache.frame_start, world.point_cache.frame_end

"""Rigid bodies: capture fills an unbaked cache and reads motion that matches a real bake."""

from __future__ import annotations

import numpy as np
import pytest

import bpy

from addon.capture import capture_bundle

from conftest import add_camera, add_mesh, tiny_cycles

pytestmark = pytest.mark.blender

FRAMES = list(range(1, 25))
START_HEIGHT = 3.0
RADIUS = 0.25
GRAVITY = 9.81


def falling_ball_scene(path):
    """A ball dropped from 3 m onto a passive ground plane, 24 fps, cache frames 1-24."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    tiny_cycles(scene, 48, 32)
    scene.frame_start, scene.frame_end = FRAMES[0], FRAMES[-1]
    scene.render.fps, scene.render.fps_base = 24, 1.0
    add_camera(scene, location=(0.0, -9.0, 1.5), rotation=(np.radians(90), 0.0, 0.0))
    ground = add_mesh("plane", "Ground", size=10.0)
    ball = add_mesh("uv_sphere", "Ball", radius=RADIUS, location=(0.0, 0.0, START_HEIGHT))
    for obj, kind in ((ground, "PASSIVE"), (ball, "ACTIVE")):
        with bpy.context.temp_override(scene=scene, object=obj, active_object=obj, selected_objects=[obj]):
            if scene.rigidbody_world is None:
                bpy.ops.rigidbody.world_add()
            bpy.ops.rigidbody.object_add(type=kind)
    ball.rigid_body.collision_shape = "SPHERE"
    scene.rigidbody_world.point_cache.frame_start, scene.rigidbody_world.point_cache.frame_end = FRAMES[0], FRAMES[-1]
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    return scene


def baked_heights(path) -> np.ndarray:
    """The ball's height per frame from Blender's own bake (``ptcache.bake_all``)."""
    bpy.ops.wm.open_mainfile(filepath=str(path))
    scene = bpy.context.scene
    with bpy.context.temp_override(scene=scene):
        bpy.ops.ptcache.bake_all(bake=True)
    assert scene.rigidbody_world.point_cache.is_baked
    heights = []
    for frame in FRAMES:
        scene.frame_set(frame)
        heights.append(scene.objects["Ball"].matrix_world.translation.z)
    return np.array(heights)


def test_falling_ball_follows_the_baked_cache_and_free_fall(tmp_path):
    blend = tmp_path / "falling.blend"
    scene = falling_ball_scene(blend)
    assert not scene.rigidbody_world.point_cache.is_baked
    path = capture_bundle(scene, tmp_path / "bundle", task="sim2video_ar", frames=FRAMES, samples=1)
    import json
    (ball,) = [obj for obj in json.loads(path.read_text())["objects"] if obj["name"] == "Ball"]
    captured = np.array([matrix[2][3] for matrix in ball["matrix_world"]])
    assert not scene.rigidbody_world.point_cache.is_baked, "capture must not mark the user's cache as baked"
    expected = baked_heights(blend)
    np.testing.assert_allclose(captured, expected, atol=1e-4)
    # free fall until contact: z(t) = z0 - g t^2 / 2, t = (frame - 1) / fps
    times = (np.array(FRAMES) - FRAMES[0]) / 24.0
    free_fall = START_HEIGHT - 0.5 * GRAVITY * times**2
    before_contact = free_fall > RADIUS + 0.2
    assert before_contact.sum() >= 10
    np.testing.assert_allclose(captured[before_contact], free_fall[before_contact], atol=0.02)
    assert captured.min() > RADIUS - 0.05  # it lands on the ground, not through it

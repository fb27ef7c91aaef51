"""Camera records and projected 2D boxes, read from the evaluated scene at the current frame."""

from __future__ import annotations

import math

import numpy as np


def camera_record(camera_object) -> dict:
    """Intrinsics of a camera object in the bundle's ``camera`` fields (millimetres / scene
    units). ``sensor_mm`` is the sensor size along the fitted axis (the height for
    ``VERTICAL`` fit, the width otherwise), which with ``lens_mm`` gives the field of view."""
    data = camera_object.data
    sensor = data.sensor_height if data.sensor_fit == "VERTICAL" else data.sensor_width
    return {
        "lens_mm": float(data.lens),
        "sensor_mm": float(sensor),
        "sensor_fit": data.sensor_fit,
        "clip_start": float(data.clip_start),
        "clip_end": float(data.clip_end),
    }


def matrix_rows(matrix) -> list[list[float]]:
    """A 4x4 ``mathutils.Matrix`` as row-major nested lists."""
    return [[float(value) for value in row] for row in matrix]


def world_to_pixels(scene, depsgraph, points_world: np.ndarray, width: int, height: int) -> np.ndarray:
    """Project ``(n, 3)`` world points to ``(n, 3)``: pixel x (right), pixel y (down, 0 at the
    image's top edge) and camera-space depth (positive in front of the camera). Same maths as
    ``bpy_extras.object_utils.world_to_camera_view``, vectorised, for perspective and
    orthographic cameras with the scene's pixel aspect."""
    camera = scene.camera
    projection = np.array(camera.calc_matrix_camera(
        depsgraph, x=width, y=height,
        scale_x=scene.render.pixel_aspect_x, scale_y=scene.render.pixel_aspect_y,
    ))
    view = np.array(camera.matrix_world.inverted())
    homogeneous = np.concatenate([points_world, np.ones((len(points_world), 1))], axis=1)
    in_camera = homogeneous @ view.T
    clip = in_camera @ projection.T
    w = clip[:, 3:4]
    with np.errstate(divide="ignore", invalid="ignore"):
        ndc = clip[:, :2] / w
    pixel_x = (ndc[:, 0] + 1.0) * 0.5 * width
    pixel_y = (1.0 - (ndc[:, 1] + 1.0) * 0.5) * height
    return np.stack([pixel_x, pixel_y, -in_camera[:, 2]], axis=1)


def object_points_world(obj, depsgraph) -> np.ndarray:
    """The evaluated object's vertices (meshes, curves, text...) or, for objects without
    geometry, its bounding-box corners, in world space, ``(n, 3)``."""
    evaluated = obj.evaluated_get(depsgraph)
    mesh = None
    try:
        mesh = evaluated.to_mesh()
    except RuntimeError:
        mesh = None
    try:
        if mesh is not None and len(mesh.vertices) > 0:
            local = np.empty(len(mesh.vertices) * 3, dtype=np.float64)
            mesh.vertices.foreach_get("co", local)
            local = local.reshape(-1, 3)
        else:
            local = np.array([tuple(corner) for corner in evaluated.bound_box], dtype=np.float64)
    finally:
        if mesh is not None:
            evaluated.to_mesh_clear()
    matrix = np.array(evaluated.matrix_world)
    return local @ matrix[:3, :3].T + matrix[:3, 3]


def bbox_pixels(points_pixels: np.ndarray, width: int, height: int) -> list[int] | None:
    """``[x_min, y_min, x_max, y_max]`` integer pixels (top-left origin, max exclusive)
    covering the projected points in front of the camera, clipped to the image; ``None``
    when nothing is in view. Points behind the camera are dropped (boxes of objects that
    straddle the camera plane are therefore approximate)."""
    in_front = points_pixels[points_pixels[:, 2] > 0]
    if len(in_front) == 0:
        return None
    x_min = max(0, math.floor(in_front[:, 0].min()))
    y_min = max(0, math.floor(in_front[:, 1].min()))
    x_max = min(width, math.ceil(in_front[:, 0].max()))
    y_max = min(height, math.ceil(in_front[:, 1].max()))
    if x_min >= x_max or y_min >= y_max:
        return None
    return [int(x_min), int(y_min), int(x_max), int(y_max)]

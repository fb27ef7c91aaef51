"""Capture of a plane and a cube: depth, masks, boxes and the bundle against the schema."""

from __future__ import annotations

import numpy as np
import pytest

import bpy
from bpy_extras.object_utils import world_to_camera_view
from mathutils import Vector

from addon.capture import capture_bundle, exr
from addon import bundle_schema

pytestmark = pytest.mark.blender

WIDTH, HEIGHT = 128, 96


@pytest.fixture
def captured(plane_and_cube, tmp_path):
    """One frame of sim2video (RGB + depth + masks) at 128x96, 2 samples."""
    path = capture_bundle(plane_and_cube, tmp_path / "bundle", task="sim2video", frames=[1],
                          objects=["Cube", "Plane"], prompt="a cube", resolution=(WIDTH, HEIGHT), params={"preset": "preview"}, quality="preview", samples=2)
    return plane_and_cube, path


def read_depth(path):
    """The bundle depth with the OpenEXR package the backend uses (this add-on's reader
    where OpenEXR is not installed, e.g. inside a Blender binary)."""
    try:
        import OpenEXR
    except ImportError:
        return exr.read_channels(path)["Z"]
    channels = OpenEXR.File(str(path), separate_channels=True).parts[0].channels
    assert list(channels) == ["Z"]
    assert channels["Z"].pixels.dtype == np.float32
    return channels["Z"].pixels


def read_mask(path):
    image = bpy.data.images.load(str(path))
    try:
        pixels = np.array(image.pixels[:], dtype=np.float32).reshape(image.size[1], image.size[0], image.channels)
    finally:
        bpy.data.images.remove(image)
    return pixels[::-1, :, 0] > 0.5  # Blender's rows start at the bottom


def analytic_cube_mask(scene, cube) -> np.ndarray:
    """Pixels whose centres fall inside the convex hull of the cube's projected corners."""
    points = []
    for corner in cube.bound_box:
        projected = world_to_camera_view(scene, scene.camera, cube.matrix_world @ Vector(corner))
        points.append((projected.x * WIDTH, (1.0 - projected.y) * HEIGHT))
    hull = convex_hull(points)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH] + 0.5
    inside = np.ones((HEIGHT, WIDTH), dtype=bool)
    for (x0, y0), (x1, y1) in zip(hull, hull[1:] + hull[:1]):
        inside &= (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0) >= 0
    return inside


def convex_hull(points):
    """Monotone chain; counter-clockwise in (x right, y down) image coordinates."""
    points = sorted(set(points))
    def half(sequence):
        hull = []
        for point in sequence:
            while len(hull) >= 2 and cross(hull[-2], hull[-1], point) <= 0:
                hull.pop()
            hull.append(point)
        return hull[:-1]
    return half(points) + half(points[::-1])


def cross(o, a, b):
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def test_bundle_validates_with_the_backend_schema(captured):
    _scene, path = captured
    try:
        from poe_backend.bundle import read_bundle
    except ImportError:  # inside a Blender binary without the repository's backend
        read_bundle = bundle_schema.read_bundle
    bundle = read_bundle(path.parent, check_files=True)
    assert bundle.task == "sim2video" and bundle.frames == [1]
    assert (bundle.width, bundle.height) == (WIDTH, HEIGHT)
    assert set(bundle.passes) == {"rgb", "depth", "mask.Cube", "mask.Plane"}
    assert [obj.name for obj in bundle.objects] == ["Cube", "Plane"]
    assert bundle.params == {"preset": "preview"}  # task parameters pass through untouched
    assert bundle.capture["quality"] == "preview" and bundle.capture["samples"] == 2


def test_depth_is_camera_z_with_infinite_background(captured):
    _scene, path = captured
    depth = read_depth(path.parent / "depth" / "0001.exr")
    plane = read_mask(path.parent / "mask" / "Plane" / "0001.png")
    cube = read_mask(path.parent / "mask" / "Cube" / "0001.png")
    assert depth.shape == (HEIGHT, WIDTH)
    interior = plane & np.roll(plane, 1, 0) & np.roll(plane, -1, 0) & np.roll(plane, 1, 1) & np.roll(plane, -1, 1)
    assert interior.sum() > 200
    # the plane faces the camera 6 units away: camera Z is 6 everywhere on it (ray length is not)
    np.testing.assert_allclose(depth[interior], 6.0, rtol=1e-3)
    background = ~(plane | cube)
    assert background.sum() > 200
    assert np.isinf(depth[background]).all() and (depth[background] > 0).all()
    assert np.isfinite(depth[cube]).all() and (depth[cube] < 6.0).all()


def test_cube_mask_matches_its_projection(captured):
    scene, path = captured
    mask = read_mask(path.parent / "mask" / "Cube" / "0001.png")
    expected = analytic_cube_mask(scene, scene.objects["Cube"])
    iou = (mask & expected).sum() / (mask | expected).sum()
    assert expected.sum() > 500
    print(f"cube mask IoU {iou:.4f}")
    assert iou > 0.98, iou


def test_boxes_cover_projected_vertices(captured):
    scene, path = captured
    bundle = bundle_schema.read_bundle(path.parent)
    for obj in bundle.objects:
        blender_object = scene.objects[obj.name]
        projected = [world_to_camera_view(scene, scene.camera, blender_object.matrix_world @ vertex.co)
                     for vertex in blender_object.data.vertices]
        xs = [point.x * WIDTH for point in projected]
        ys = [(1.0 - point.y) * HEIGHT for point in projected]
        expected = [max(0, int(np.floor(min(xs)))), max(0, int(np.floor(min(ys)))),
                    min(WIDTH, int(np.ceil(max(xs)))), min(HEIGHT, int(np.ceil(max(ys))))]
        assert obj.bbox_px == [expected], obj.name
        mask = read_mask(path.parent / "mask" / obj.name / "0001.png")
        rows, columns = np.nonzero(mask)
        x_min, y_min, x_max, y_max = obj.bbox_px[0]
        assert x_min <= columns.min() and columns.max() < x_max and y_min <= rows.min() and rows.max() < y_max


def test_rgb_is_an_8_bit_png(captured):
    _scene, path = captured
    data = (path.parent / "rgb" / "0001.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, color_type = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"), data[24], data[25]
    assert (width, height, depth, color_type) == (WIDTH, HEIGHT, 8, 2)

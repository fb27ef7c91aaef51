"""The numpy EXR codec against the OpenEXR package: single-part files (Blender 4.2's
multilayer layout) and the bundle's one-channel depth file."""

from __future__ import annotations

import numpy as np
import pytest

from addon.capture import exr

pytestmark = pytest.mark.blender  # importing addon.capture needs bpy

OpenEXR = pytest.importorskip("OpenEXR")


def test_reads_an_uncompressed_single_part_file_written_by_openexr(tmp_path):
    generator = np.random.default_rng(0)
    depth = generator.uniform(1.0, 9.0, (6, 5)).astype(np.float32)
    index = generator.integers(0, 4, (6, 5)).astype(np.float32)
    half = generator.uniform(0.0, 1.0, (6, 5)).astype(np.float16)
    channels = {"ViewLayer.Depth.Z": depth, "ViewLayer.IndexOB.X": index, "ViewLayer.Combined.R": half}
    header = {"compression": OpenEXR.NO_COMPRESSION, "type": OpenEXR.scanlineimage}
    OpenEXR.File(header, channels).write(str(tmp_path / "layers.exr"))
    read = exr.read_channels(tmp_path / "layers.exr")
    np.testing.assert_array_equal(read["ViewLayer.Depth.Z"], depth)
    np.testing.assert_array_equal(read["ViewLayer.IndexOB.X"], index)
    np.testing.assert_array_equal(read["ViewLayer.Combined.R"], half.astype(np.float32))


def test_depth_file_has_one_float32_channel_z(tmp_path):
    depth = np.array([[1.5, np.inf], [2.25, 1e-3], [7.0, 3.0]], dtype=np.float32)
    exr.write_single_channel(tmp_path / "depth.exr", depth)
    part = OpenEXR.File(str(tmp_path / "depth.exr"), separate_channels=True).parts[0]
    assert list(part.channels) == ["Z"]
    np.testing.assert_array_equal(part.channels["Z"].pixels, depth)
    np.testing.assert_array_equal(exr.read_channels(tmp_path / "depth.exr")["Z"], depth)


def test_compressed_files_are_refused_with_a_message(tmp_path):
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    OpenEXR.File(header, {"Z": np.ones((4, 4), np.float32)}).write(str(tmp_path / "zip.exr"))
    with pytest.raises(ValueError, match="codec NONE"):
        exr.read_channels(tmp_path / "zip.exr")

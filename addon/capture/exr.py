"""Minimal OpenEXR reading and writing in numpy, for uncompressed scanline files.

Blender's Python has no EXR module (no OpenEXR, no OpenImageIO in the bpy 5.0 wheel), and
``bpy.data.images`` cannot pick a pass out of a multilayer EXR. Capture therefore writes
the render result as an *uncompressed* multilayer EXR and reads it here, and writes the
bundle's depth file (one float32 channel ``Z``) here too. Both single-part files
(Blender 4.2) and multi-part files (Blender 5.0 writes one part per pass) are read.
Only ``NO_COMPRESSION`` scanline images are supported; anything else raises ``ValueError``.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

MAGIC = 20000630
_MULTIPART = 0x1000
_TILED = 0x200
_PIXEL_TYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}


def read_channels(path: str | Path) -> dict[str, np.ndarray]:
    """Every channel of every part as a ``(height, width)`` array, keyed by full channel name
    (e.g. ``"ViewLayer.Depth.Z"``). Float channels come back as float32."""
    data = Path(path).read_bytes()
    magic, version = struct.unpack_from("<ii", data, 0)
    if magic != MAGIC:
        raise ValueError(f"{path}: not an OpenEXR file")
    if version & _TILED:
        raise ValueError(f"{path}: tiled EXR files are not supported")
    multipart = bool(version & _MULTIPART)
    offset, headers = 8, []
    while True:
        header, offset = _read_header(data, offset)
        headers.append(header)
        if not multipart:
            break
        if data[offset] == 0:  # an empty header ends the list of parts
            offset += 1
            break
    tables = []
    for header in headers:
        _check_supported(header, path)
        count = header.get("chunkCount", header["height"])
        tables.append(struct.unpack_from(f"<{count}Q", data, offset))
        offset += 8 * count
    channels: dict[str, np.ndarray] = {}
    for part, (header, table) in enumerate(zip(headers, tables)):
        channels.update(_read_part(data, header, table, part if multipart else None, path))
    return channels


def write_single_channel(path: str | Path, values: np.ndarray, name: str = "Z") -> Path:
    """Write a ``(height, width)`` array as an uncompressed float32 EXR with one channel."""
    values = np.ascontiguousarray(values, dtype="<f4")
    height, width = values.shape
    header = b"".join([
        _attribute("channels", "chlist", name.encode() + b"\0" + struct.pack("<iB3xii", 2, 0, 1, 1) + b"\0"),
        _attribute("compression", "compression", b"\0"),
        _attribute("dataWindow", "box2i", struct.pack("<4i", 0, 0, width - 1, height - 1)),
        _attribute("displayWindow", "box2i", struct.pack("<4i", 0, 0, width - 1, height - 1)),
        _attribute("lineOrder", "lineOrder", b"\0"),
        _attribute("pixelAspectRatio", "float", struct.pack("<f", 1.0)),
        _attribute("screenWindowCenter", "v2f", struct.pack("<2f", 0.0, 0.0)),
        _attribute("screenWindowWidth", "float", struct.pack("<f", 1.0)),
    ]) + b"\0"
    start = 8 + len(header) + 8 * height
    row_bytes = 4 * width
    offsets = [start + row * (8 + row_bytes) for row in range(height)]
    chunks = b"".join(struct.pack("<ii", row, row_bytes) + values[row].tobytes() for row in range(height))
    path = Path(path)
    path.write_bytes(struct.pack("<ii", MAGIC, 2) + header + struct.pack(f"<{height}Q", *offsets) + chunks)
    return path


def _attribute(name: str, kind: str, value: bytes) -> bytes:
    return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value


def _read_header(data: bytes, offset: int) -> tuple[dict, int]:
    header: dict = {}
    while data[offset] != 0:
        name, offset = _read_string(data, offset)
        kind, offset = _read_string(data, offset)
        (size,) = struct.unpack_from("<i", data, offset)
        value = data[offset + 4 : offset + 4 + size]
        offset += 4 + size
        if kind == "chlist":
            header["channels"] = _parse_channels(value)
        elif kind == "compression":
            header["compression"] = value[0]
        elif name == "dataWindow":
            x_min, y_min, x_max, y_max = struct.unpack("<4i", value)
            header.update(x_min=x_min, y_min=y_min, width=x_max - x_min + 1, height=y_max - y_min + 1)
        elif name == "chunkCount":
            header["chunkCount"] = struct.unpack("<i", value)[0]
        elif name == "type":
            header["type"] = value.rstrip(b"\0").decode()
    return header, offset + 1


def _read_string(data: bytes, offset: int) -> tuple[str, int]:
    end = data.index(b"\0", offset)
    return data[offset:end].decode(), end + 1


def _parse_channels(value: bytes) -> list[tuple[str, np.dtype]]:
    channels, offset = [], 0
    while value[offset] != 0:
        name, offset = _read_string(value, offset)
        pixel_type, _linear, x_sampling, y_sampling = struct.unpack_from("<iB3xii", value, offset)
        offset += 16
        if (x_sampling, y_sampling) != (1, 1):
            raise ValueError(f"channel {name}: subsampled channels are not supported")
        channels.append((name, _PIXEL_TYPES[pixel_type]))
    return channels


def _check_supported(header: dict, path) -> None:
    if header.get("compression", 0) != 0:
        raise ValueError(f"{path}: compressed EXR (compression {header['compression']}); write with codec NONE")
    if header.get("type", "scanlineimage") != "scanlineimage":
        raise ValueError(f"{path}: part type {header['type']!r} is not supported")


def _read_part(data: bytes, header: dict, table: tuple[int, ...], part: int | None, path) -> dict[str, np.ndarray]:
    width, height, channels = header["width"], header["height"], header["channels"]
    row_dtype = np.dtype([(name, dtype, (width,)) for name, dtype in channels])
    rows = np.empty(height, dtype=row_dtype)
    prefix = 4 if part is not None else 0
    for chunk_offset in table:
        y, size = struct.unpack_from("<ii", data, chunk_offset + prefix)
        start = chunk_offset + prefix + 8
        rows[y - header["y_min"]] = np.frombuffer(data, dtype=row_dtype, count=1, offset=start)[0]
    result = {}
    for name, dtype in channels:
        values = rows[name]
        result[name] = values.astype(np.float32) if dtype.kind == "f" else values.copy()
    return result

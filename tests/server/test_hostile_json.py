"""Hostile JSON and text against a real backend on 127.0.0.1 (issue 22): nesting past
Python's recursion limit, integers past ``int()``'s digit limit or 64 bits, lone
surrogates, NaN, NUL and bytes that are not UTF-8, and sizes past the caps on what the
server stores and echoes (the JSON body, params, every text, frames, objects, pixels). Each
is a 4xx whose body names the field, never a 500; a depth EXR is checked from its header,
so the server never decodes its pixels (its values are checked where the job reads them).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from poe_backend.bundle import MAX_FRAMES, MAX_JSON_DEPTH, MAX_OBJECTS, MAX_TEXT_CHARS, BundleError
from poe_backend.server.errors import describe_failure
from poe_backend.tasks.images import read_depth
from tests.server.conftest import QUICK, Backend, assert_field, depth_map, post_tar, tar_of, write_bundle, write_exr

#: Arrays nested 2000 deep: json.loads raises RecursionError on it.
PAST_RECURSION = "[" * 2000 + "]" * 2000
#: Nested one level past the limit, which json.loads still parses.
PAST_LIMIT = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
#: More digits than int() reads from text (sys.get_int_max_str_digits(): 4300).
LONG_INTEGER = "9" * 5000


def _bundles(backend: Backend) -> Path:
    return backend.data_dir.parent / "bundles"


def _post_json(backend: Backend, body: str | bytes | Any) -> httpx.Response:
    """``POST /v1/jobs`` with ``body`` as the JSON text (or an iterable of pieces: chunked)."""
    with backend.client() as client:
        return client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})


def _submit(backend: Backend, bundle: Path, **fields: Any) -> httpx.Response:
    """Submit the local ``bundle``; ``fields`` are written with JSON escapes (a lone
    surrogate travels as ``\\ud800``)."""
    return _post_json(backend, json.dumps({"bundle_path": str(bundle), **fields}))


def _raw_bundle(backend: Backend, name: str, text: str | bytes) -> Path:
    """A bundle directory whose bundle.json is ``text`` as given."""
    directory = _bundles(backend) / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bundle.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    return directory


def _toy_json(**extra: str) -> str:
    """A toy2d bundle.json with ``extra`` members spliced in as raw JSON text."""
    text = json.dumps({"schema": "poe-bundle/1", "task": "toy2d", "width": 8, "height": 8, "frames": [1], "params": QUICK})
    return text[:-1] + "".join(f", {json.dumps(name)}: {value}" for name, value in extra.items()) + "}"


def _png(path: Path, width: int = 64, height: int = 48) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (90, 120, 30)).save(path)


def _tall_exr(path: Path, width: int, height: int) -> None:
    """A valid ZIP-compressed EXR, ``width`` x ``height`` (height a multiple of 16), channel
    Z = 2.0, made without its pixels in memory: OpenEXR writes one 16-line chunk, which is
    repeated (y = 0, 16, ...) under the same header with its windows set to the full size.
    16384² is 1.1 MiB on disk and 1 GiB decoded."""
    block = path.with_suffix(".block.exr")
    write_exr(block, np.full((16, width), 2.0, np.float32))
    data = bytearray(block.read_bytes())
    block.unlink()
    position = 8  # after the magic number and version
    while data[position] != 0:  # attributes: name \0 type \0 int32 size, value
        name_end = data.index(b"\0", position)
        type_end = data.index(b"\0", name_end + 1)
        (size,) = struct.unpack_from("<i", data, type_end + 1)
        if data[position:name_end] in (b"dataWindow", b"displayWindow"):
            struct.pack_into("<iiii", data, type_end + 5, 0, 0, width - 1, height - 1)
        position = type_end + 5 + size
    header, payload = data[: position + 1], data[position + 1 + 8 + 8 :]  # skip the one offset, the chunk's y and size
    count = height // 16
    offsets = b"".join(struct.pack("<Q", len(header) + 8 * count + index * (8 + len(payload))) for index in range(count))
    path.write_bytes(header + offsets + b"".join(struct.pack("<ii", 16 * index, len(payload)) + payload for index in range(count)))


def _peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory since its last reset (VmHWM, MiB)."""
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def _reset_peak_rss(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # 5: reset the peak RSS (VmHWM) to the current RSS


# ---- nesting ------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["body", "params", "bundle.json"])
def test_json_nested_past_the_recursion_limit_is_a_400_naming_where(backend, where):
    """json.loads raised RecursionError (a 500) on all three."""
    bundle = write_bundle(_bundles(backend) / "nested")
    if where == "body":
        response = _post_json(backend, '{"bundle_path": %s, "params": %s}' % (json.dumps(str(bundle)), PAST_RECURSION))
    elif where == "params":
        response = post_tar(backend, tar_of({"bundle.json": _toy_json().encode()}), params=PAST_RECURSION)
    else:
        response = post_tar(backend, tar_of({"bundle.json": _toy_json(capture=PAST_RECURSION).encode()}))
    error = assert_field(response, 400, where)
    assert "nested" in error["message"], error


def test_json_nested_past_the_limit_is_refused_even_where_python_parses_it(backend):
    """Stored and echoed JSON stays shallow: the refusal names the value's own place."""
    response = _submit(backend, _raw_bundle(backend, "deep-capture", _toy_json(capture='{"notes": %s}' % PAST_LIMIT)))
    error = assert_field(response, 400, "capture.notes" + "[0]" * (MAX_JSON_DEPTH - 2))
    assert f"at most {MAX_JSON_DEPTH}" in error["message"], error
    response = post_tar(backend, tar_of({"bundle.json": _toy_json().encode()}), params='{"spec": %s}' % PAST_LIMIT)
    assert_field(response, 400, "params.spec" + "[0]" * (MAX_JSON_DEPTH - 2))  # params sit at depth 2 in every transport, as in bundle.json


# ---- numbers ------------------------------------------------------------------------------

def test_integers_past_the_digit_limit_or_64_bits_are_400s(backend):
    """int() refused the digits with a ValueError (a 500); a 64-bit overflow reached
    math.isfinite (OverflowError, a 500) or was stored."""
    response = post_tar(backend, tar_of({"bundle.json": _toy_json().encode()}), params='{"seed": %s}' % LONG_INTEGER)
    assert "64 bits" in assert_field(response, 400, "params")["message"]
    assert_field(_submit(backend, _raw_bundle(backend, "long-int", _toy_json(capture='{"x": %s}' % LONG_INTEGER))), 400, "bundle.json")
    assert_field(_submit(backend, write_bundle(_bundles(backend) / "huge-fps", fps=10**400)), 400, "fps")
    assert_field(_submit(backend, write_bundle(_bundles(backend) / "huge-seed", seed=2**64)), 400, "seed")


def test_nan_infinity_nul_non_utf8_and_unhashable_values_in_bundle_json_are_400s(backend):
    """NaN and 1e999 were stored; NUL in a pass path, bytes that are not UTF-8 and a list
    for the task raised (500s)."""
    assert_field(_submit(backend, _raw_bundle(backend, "nan", _toy_json(capture='{"x": NaN}'))), 400, "bundle.json")
    assert_field(_submit(backend, _raw_bundle(backend, "inf", _toy_json(capture='{"x": 1e999}'))), 400, "capture.x")
    assert "NUL" in assert_field(_submit(backend, write_bundle(_bundles(backend) / "nul", passes={"plate": "pl\0ate.png"})), 400, "passes.plate")["message"]
    assert "UTF-8" in assert_field(_submit(backend, _raw_bundle(backend, "latin", _toy_json(prompt='"caf\xe9"').encode("latin-1"))), 400, "bundle.json")["message"]
    assert_field(_submit(backend, write_bundle(_bundles(backend) / "task-list", task=["toy2d"])), 400, "task")


# ---- lone surrogates: refused by name, and every error body renders -------------------------

def test_a_lone_surrogate_in_a_key_or_in_bundle_path_is_a_400_that_renders(backend):
    """The error body named the bad text as is, and rendering it raised UnicodeEncodeError."""
    bundle = write_bundle(_bundles(backend) / "surrogates")
    error = assert_field(_submit(backend, bundle, **{"\ud800": 1}), 400, "\\ud800")
    assert "unknown field" in error["message"], error
    error = assert_field(_submit(backend, "/tmp/\ud800"), 400, "bundle_path")
    assert "surrogate" in error["message"], error


def test_a_bundle_path_that_cannot_be_resolved_is_a_400(backend):
    """A symlink loop (RuntimeError from Path.resolve) and a name longer than the file
    system takes (ENAMETOOLONG from is_dir) under an allowed root were 500s."""
    loop = _bundles(backend) / "loop"
    loop.symlink_to(loop)
    for path in (loop / "bundle", _bundles(backend) / ("x" * 300)):
        error = assert_field(_submit(backend, str(path)), 400, "bundle_path")
        assert "cannot be resolved" in error["message"] or "not a directory" in error["message"], error


def test_lone_surrogates_in_stored_text_are_refused_naming_the_field(backend):
    """A surrogate in bundle.json's prompt was stored, and every later status of the job
    (the prompt is echoed) would have been a 500."""
    error = assert_field(_submit(backend, _raw_bundle(backend, "prompt-surrogate", _toy_json(prompt='"a\\ud800b"'))), 400, "prompt")
    assert "surrogate" in error["message"], error
    error = assert_field(_submit(backend, write_bundle(_bundles(backend) / "params-surrogate"), params={"sampler": "a\udfffb"}), 400, "params.sampler")
    assert "surrogate" in error["message"], error


# ---- sizes ----------------------------------------------------------------------------------

def test_the_json_body_is_capped_while_it_is_read(backend):
    """A valid body padded to 2 MiB with whitespace was read whole and accepted."""
    body = json.dumps({"bundle_path": str(write_bundle(_bundles(backend) / "padded"))}).encode() + b" " * (2 << 20)
    error = assert_field(_post_json(backend, body), 413, "body")
    assert "MiB" in error["message"], error
    pieces = (body[start : start + (1 << 16)] for start in range(0, len(body), 1 << 16))
    assert_field(_post_json(backend, pieces), 413, "body")  # no Content-Length: counted while read


def test_params_are_capped_in_size(backend):
    """A toy spec of 2000 mixture components (~100 KiB) was stored and echoed back."""
    count = 2000
    expert = {"type": "gmm", "weights": [1 / count] * count, "means": [[0.5, -0.5]] * count, "covs": [[[0.6, 0.0], [0.0, 0.6]]] * count}
    spec = {"experts": [expert], "rewards": [{"type": "disc", "center": [1.0, 1.0], "radius": 0.5}]}
    error = assert_field(_submit(backend, write_bundle(_bundles(backend) / "big-params"), params={"spec": spec}), 413, "params")
    assert "KiB" in error["message"], error


def test_every_text_is_capped_at_max_text_chars(backend):
    """Object prompts in bundle.json and string params (a video prompt) had no cap."""
    long_text = "x" * (MAX_TEXT_CHARS + 1)
    bundle = write_bundle(_bundles(backend) / "long-prompt", prompt=long_text)
    assert_field(_submit(backend, bundle), 400, "prompt")
    bundle = write_bundle(_bundles(backend) / "long-object-prompt", objects=[{"name": "cube", "pass_index": 1, "prompt": long_text}])
    assert f"at most {MAX_TEXT_CHARS}" in assert_field(_submit(backend, bundle), 400, "objects[0].prompt")["message"]
    bundle = write_bundle(_bundles(backend) / "long-video-prompt", task="sim2video_ar", passes={"rgb": "rgb/####.png"}, params={})
    _png(bundle / "rgb/0001.png")
    assert_field(_submit(backend, bundle, params={"prompt": long_text}), 400, "params.prompt")


def test_frames_objects_and_pixels_per_frame_are_capped(backend):
    """2 000 000 frames stalled every status read; 2000 boxed objects made 2001 experts."""
    assert_field(_submit(backend, write_bundle(_bundles(backend) / "frames", frames=list(range(MAX_FRAMES + 1)))), 400, "frames")
    objects = [{"name": f"o{index}", "pass_index": index + 1} for index in range(MAX_OBJECTS + 1)]
    assert_field(_submit(backend, write_bundle(_bundles(backend) / "objects", objects=objects)), 400, "objects")
    assert_field(_submit(backend, write_bundle(_bundles(backend) / "pixels", width=100_000, height=100_000)), 400, "width")


# ---- depth: the header at submit, the values where the job reads them -------------------------

def test_a_depth_exr_is_checked_from_its_header_without_decoding_its_pixels(backend):
    """A 1.1 MiB ZIP-compressed 16384² EXR took the server's peak memory from ~290 to
    ~1870 MB (decoded whole, 1 GiB of float32) before its size was compared."""
    bundle = write_bundle(_bundles(backend) / "huge-depth", passes={"depth": "depth/####.exr"})
    _tall_exr(bundle / "depth/0001.exr", 16384, 16384)
    pid = backend.process.pid
    _reset_peak_rss(pid)
    before = _peak_rss_mib(pid)
    error = assert_field(_submit(backend, bundle), 400, "passes.depth")
    assert "16384x16384" in error["message"], error
    assert _peak_rss_mib(pid) - before < 64, (before, _peak_rss_mib(pid))


def test_depth_values_are_not_decoded_at_submit(backend):
    """The server decoded every depth EXR to check its values (now the job does)."""
    bundle = write_bundle(_bundles(backend) / "nan-depth", passes={"depth": "depth/####.exr"})
    write_exr(bundle / "depth/0001.exr", depth_map(np.nan))
    assert _submit(backend, bundle).status_code == 201


@pytest.mark.parametrize("depth,words", [
    (depth_map(np.nan), "NaN values (16 pixels, first at x=0, y=0)"),
    (np.full((48, 64), np.nan, np.float32), "NaN values"),
    (depth_map(-0.5), "negative values"),
    (depth_map(-np.inf), "negative values"),
    (np.full((48, 64), np.inf, np.float32), "every depth pixel is background"),
    (np.ones((48, 64), np.uint32), "must be a 2-D float image"),
])
def test_the_job_refuses_bad_depth_values_naming_the_pass(tmp_path, depth, words):
    """read_depth (where insertion reads depth) fails with a BundleError naming
    passes.depth, which the job's failure reports as invalid_bundle."""
    write_exr(tmp_path / "0001.exr", depth)
    with pytest.raises(BundleError) as refused:
        read_depth(tmp_path / "0001.exr", (24, 32), "passes.depth")
    assert refused.value.field == "passes.depth" and words in refused.value.message, refused.value
    failure = describe_failure(refused.value, task="insertion")
    assert failure.code == "invalid_bundle" and failure.message.startswith("passes.depth: 0001.exr"), failure

"""Every kind of bad submission gets a 4xx whose message names the field at fault."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import OpenEXR
import pytest
from PIL import Image
from pydantic import ValidationError

from poe_backend.tasks import TASK_CLASSES, get_task
from poe_backend.tasks.toy2d import DEFAULT_SPEC

from tests.server.conftest import assert_field, post_tar, write_bundle


def _png(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height)).save(path)


def _exr(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    OpenEXR.File({"type": OpenEXR.scanlineimage}, {"Z": np.zeros((height, width), np.float32)}).write(str(path))


def _post_path(backend, bundle: Path, **fields):
    return backend.client().post("/v1/jobs", json={"bundle_path": str(bundle), **fields})


def _tar_bytes(add) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        add(archive)
    return buffer.getvalue()


def _file(archive: tarfile.TarFile, name: str, data: bytes = b"x") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def _special(name: str, kind: bytes, linkname: str = ""):
    def add(archive: tarfile.TarFile) -> None:
        _file(archive, "bundle.json", b"{}")
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, linkname
        archive.addfile(info)
    return add


def _directory(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


@pytest.mark.parametrize("fields,field", [
    ({"task": "nope"}, "task"),
    ({"task": ["toy2d"]}, "task"),
    ({"params": {"particles": 0}}, "params.particles"),
    ({"params": {"particles": "many"}}, "params.particles"),
    ({"params": {"unknown_knob": 1}}, "params.unknown_knob"),
    ({"params": {"levels": 10**9}}, "params.levels"),
    ({"params": {"particles": True}}, "params.particles"),  # a boolean is not the integer 1
    ({"params": {"levels": 6.0}}, "params.levels"),
    ({"params": {"langevin_steps": "1"}}, "params.langevin_steps"),
    ({"params": [1, 2]}, "params"),
    ({"colour": "red"}, "colour"),
    # checked at submit, not when the job runs: a sampler the spec cannot run
    ({"params": {"sampler": "single:99"}}, "params"),
    ({"params": {"sampler": "warp"}}, "params"),
])
def test_bad_request_fields(backend, fields, field):
    bundle = write_bundle(backend.data_dir / "b-fields")
    assert_field(_post_path(backend, bundle, **fields), 400, field)


def test_an_infinite_reward_radius_is_refused_at_submit(backend):
    """``1e999`` parses to infinity; the toy spec refused it only when the job ran. Every
    request's JSON must hold finite numbers: the refusal names the number's place."""
    bundle = write_bundle(backend.data_dir / "b-radius")
    spec = json.dumps({**DEFAULT_SPEC, "rewards": [{"type": "disc", "center": [0, 0], "radius": 12345}]}).replace("12345", "1e999")
    body = '{"bundle_path": %s, "params": {"spec": %s}}' % (json.dumps(str(bundle)), spec)
    response = backend.client().post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert_field(response, 400, "params.spec.rewards[0].radius")


@pytest.mark.parametrize("task_name", list(TASK_CLASSES))
def test_no_task_takes_a_boolean_for_a_number_or_a_number_for_a_boolean(task_name):
    """Every task's parameter model, every field: ``true`` for an integer, ``1`` for a
    boolean are refused naming the field; an integer is still a valid float."""
    params_model = get_task(task_name).Params
    for name, info in params_model.model_fields.items():
        kinds = {getattr(kind, "__name__", None) for kind in (info.annotation, *getattr(info.annotation, "__args__", ()))}
        wrong = True if "int" in kinds else 1 if "bool" in kinds else None
        if wrong is not None:
            with pytest.raises(ValidationError) as refused:
                params_model.model_validate({name: wrong})
            assert refused.value.errors()[0]["loc"] == (name,), (task_name, name)
    if "step_scale" in params_model.model_fields:  # a float field, (0, 2] or wider
        assert params_model.model_validate({"step_scale": 1}).step_scale == 1.0


@pytest.mark.parametrize("overrides,field", [
    ({"schema": "poe-bundle/0"}, "schema"),
    ({"task": "insertion"}, "passes.plate"),  # insertion needs plate, depth and object masks
    ({"width": -4}, "width"),
    ({"frames": []}, "frames"),
    ({"passes": {"rgb": "rgb/####.png"}}, "passes.rgb"),  # files missing
])
def test_bad_bundles(backend, overrides, field):
    bundle = write_bundle(backend.data_dir / f"b-{field}", **overrides)
    assert_field(_post_path(backend, bundle), 400, field)


def test_image_sizes_must_match_the_bundle(backend):
    bundle = write_bundle(backend.data_dir / "b-sizes", passes={"rgb": "rgb/####.png", "depth": "depth/####.exr"}, frames=[1, 2])
    for frame in (1, 2):
        _png(bundle / f"rgb/{frame:04d}.png", 64, 48)
        _exr(bundle / f"depth/{frame:04d}.exr", 64, 48)
    assert _post_path(backend, bundle).status_code == 201
    _png(bundle / "rgb/0002.png", 32, 48)
    response = _post_path(backend, bundle)
    assert_field(response, 400, "passes.rgb")
    assert "0002.png is 32x48" in response.json()["error"]["message"]
    _png(bundle / "rgb/0002.png", 64, 48)
    _exr(bundle / "depth/0001.exr", 64, 40)
    response = _post_path(backend, bundle)
    assert_field(response, 400, "passes.depth")
    assert "0001.exr is 64x40" in response.json()["error"]["message"]


def test_paths_outside_the_allowed_roots(backend, tmp_path):
    outside = write_bundle(tmp_path / "elsewhere")
    assert_field(_post_path(backend, outside), 403, "bundle_path")
    assert_field(_post_path(backend, Path("relative/bundle")), 400, "bundle_path")
    escape = backend.data_dir / ".." / ".." / outside.relative_to(outside.anchor)
    assert_field(_post_path(backend, escape), 403, "bundle_path")
    allowed = write_bundle(backend.data_dir.parent / "bundles" / "ok")
    assert _post_path(backend, allowed).status_code == 201


@pytest.mark.parametrize("add,field", [
    (lambda archive: _file(archive, "../evil.json"), "bundle:../evil.json"),
    (lambda archive: _file(archive, "/etc/evil.json"), "bundle:/etc/evil.json"),
    (_special("link.json", tarfile.SYMTYPE, "/etc/passwd"), "bundle:link.json"),
    (_special("hard.json", tarfile.LNKTYPE, "bundle.json"), "bundle:hard.json"),
    (_special("dev", tarfile.CHRTYPE), "bundle:dev"),
    (_special("fifo", tarfile.FIFOTYPE), "bundle:fifo"),
    (lambda archive: _file(archive, "other.txt"), "bundle"),  # no bundle.json
    (lambda archive: (_file(archive, "sub"), archive.addfile(_directory("sub/"))), "bundle"),  # a folder over a file
])
def test_unsafe_or_invalid_tars(backend, add, field):
    assert_field(post_tar(backend, _tar_bytes(add)), 400, field)
    assert not (backend.data_dir.parent / "evil.json").exists() and not Path("/etc/evil.json").exists()


def test_not_a_tar_and_bad_query_params(backend):
    assert_field(post_tar(backend, b"this is not a tar archive" * 100), 400, "bundle")
    good = _tar_bytes(lambda archive: _file(archive, "bundle.json", json.dumps({"schema": "poe-bundle/1", "task": "toy2d", "width": 8, "height": 8, "frames": [1]}).encode()))
    assert_field(post_tar(backend, good, params="{not json"), 400, "params")
    assert_field(post_tar(backend, good, task="nope"), 400, "task")
    assert_field(post_tar(backend, good, params=json.dumps({"particles": -1})), 400, "params.particles")
    assert post_tar(backend, good).status_code == 201


def test_oversized_uploads(backend):
    big = _tar_bytes(lambda archive: (_file(archive, "bundle.json", b"{}"), _file(archive, "rgb/0001.png", b"\0" * (17 << 20))))
    assert_field(post_tar(backend, big), 413, "bundle")

    def chunks():
        for start in range(0, len(big), 1 << 16):
            yield big[start:start + (1 << 16)]

    response = backend.client().post("/v1/jobs", params={"task": "toy2d"}, content=chunks(), headers={"content-type": "application/x-tar"})
    assert_field(response, 413, "bundle")  # no Content-Length: caught while streaming
    response = backend.client().post("/v1/jobs", data={"task": "toy2d"}, files={"bundle": ("b.tar", big, "application/x-tar")})
    assert_field(response, 413, "bundle")


def test_a_large_tar_refused_at_its_first_member_still_gets_an_answer(backend):
    body = _tar_bytes(lambda archive: (_file(archive, "../evil.json"), _file(archive, "rgb/0001.png", b"\0" * (12 << 20))))

    def chunks():
        for start in range(0, len(body), 1 << 16):
            yield body[start:start + (1 << 16)]

    response = backend.client().post("/v1/jobs", params={"task": "toy2d"}, content=chunks(), headers={"content-type": "application/x-tar"})
    assert_field(response, 400, "bundle:../evil.json")
    assert backend.client().get("/v1/health").status_code == 200


def test_multipart_upload_and_wrong_content_type(backend):
    body = _tar_bytes(lambda archive: _file(archive, "b/bundle.json", json.dumps({"schema": "poe-bundle/1", "task": "toy2d", "width": 8, "height": 8, "frames": [1]}).encode()))
    response = backend.client().post("/v1/jobs", data={"task": "toy2d", "params": json.dumps({"particles": 8, "levels": 3})}, files={"bundle": ("b.tar", body, "application/x-tar")})
    assert response.status_code == 201, response.text
    response = backend.client().post("/v1/jobs", content=b"hello", headers={"content-type": "text/plain"})
    assert_field(response, 415, "content-type")

"""A full disk: submission answers 507 naming the free space, leaves no job directory and
no queued job; the server goes on once space is back. The data dir is a small tmpfs
mounted here (needs root, as CI runs)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.server.conftest import QUICK, start_backend, wait_for, write_bundle

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_gives_507_and_leaves_nothing(small_disk, tmp_path):
    data_dir = small_disk / "data"
    data_dir.mkdir()
    bundles = tmp_path / "bundles"
    backend = start_backend(data_dir, "--allow-root", str(bundles))
    try:
        client = backend.client()
        bundle = write_bundle(bundles / "b")
        filler = small_disk / "filler"
        with open(filler, "wb", buffering=0) as handle:
            try:
                while True:
                    handle.write(b"\0" * 4096)
            except OSError:
                pass
        before = set((data_dir / "jobs").iterdir())
        response = client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": QUICK})
        assert response.status_code == 507 and "MiB free" in response.json()["error"]["message"], response.text
        assert set((data_dir / "jobs").iterdir()) == before
        assert client.get("/v1/jobs").json()["total"] == 0 and client.get("/v1/health").json()["queued"] == 0
        filler.unlink()
        job = client.post("/v1/jobs", json={"bundle_path": str(bundle), "params": QUICK}).json()
        assert wait_for(client, job["id"], {"done", "failed"})["state"] == "done"
    finally:
        backend.stop()

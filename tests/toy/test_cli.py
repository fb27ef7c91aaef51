"""``poe-backend toy sample|figures`` as a user runs them (real subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.toy import products

REPO = Path(__file__).resolve().parents[2]


def _toy(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "poe_backend", "toy", *arguments], cwd=REPO, capture_output=True, text=True, timeout=300)


def _write(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def test_sample_writes_equally_weighted_samples_and_one_json_line(tmp_path):
    spec = _write(tmp_path, products.with_disc(products.two_experts_2d(), [1.5, 0.0], 1.0))
    result = _toy("sample", "--spec", str(spec), "--out", str(tmp_path / "out.npy"), "--particles", "300", "--seed", "4")
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.strip().splitlines()
    stats = json.loads(line)
    assert stats["path"].startswith("ais") and stats["nfe_per_particle"] <= 2 * 500 and stats["seconds"] > 0
    samples = np.load(tmp_path / "out.npy")
    assert samples.shape == (300, 2) and np.all(np.linalg.norm(samples - [1.5, 0.0], axis=1) <= 1.0)


def test_score_only_and_other_samplers_run(tmp_path):
    """One process per sampler (each start imports torch: ~2 s), each printing its JSON line;
    the score-only run's names the Feynman-Kac path."""
    spec = _write(tmp_path, products.two_experts_2d())
    paths = {}
    for extra in (["--score-only"], ["--sampler", "naive"], ["--sampler", "single:1"], ["--sampler", "autoregressive", "--levels", "10"]):
        result = _toy("sample", "--spec", str(spec), "--out", str(tmp_path / "out.npy"), "--particles", "50", *extra)
        assert result.returncode == 0, (extra, result.stderr)
        assert np.load(tmp_path / "out.npy").shape == (50, 2)
        paths[" ".join(extra)] = json.loads(result.stdout)["path"]
    assert paths["--score-only"].startswith("fkc")


GOOD = {"type": "gmm", "weights": [1.0], "means": [[0.0, 0.0]], "covs": [[[1.0, 0.0], [0.0, 1.0]]]}


@pytest.mark.parametrize(
    ("expert", "field"),
    [
        ({**GOOD, "covs": [[[1.0, 2.0], [2.0, 1.0]]]}, "experts[0].covs[0]: not positive definite"),
        ({**GOOD, "weights": [0.5]}, "experts[0].weights: must sum to 1"),
        ({**GOOD, "means": [[0.0, 0.0], [1.0, 1.0]]}, "experts[0].means"),
        ({**GOOD, "covs": [[[1.0, 0.0, 0.0]]]}, "experts[0].covs"),
        ({**GOOD, "type": "flow"}, "experts[0].type: unknown expert type"),
        ({**GOOD, "weights": [0.5, 0.5], "means": [[0, 0], [1, 1]], "covs": [[[1, 0], [0, 1]]] * 2, "lambda": 2.0}, "experts[0].lambda"),
    ],
)
def test_bad_specs_exit_non_zero_with_one_line_naming_the_field(tmp_path, expert, field):
    spec = _write(tmp_path, {"experts": [expert]})
    result = _toy("sample", "--spec", str(spec), "--out", str(tmp_path / "out.npy"))
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert field in line


def test_unknown_reward_type_is_named(tmp_path):
    spec = _write(tmp_path, {"experts": [GOOD], "rewards": [{"type": "box", "center": [0, 0], "radius": 1}]})
    result = _toy("sample", "--spec", str(spec), "--out", str(tmp_path / "out.npy"))
    assert result.returncode != 0 and "rewards[0].type" in result.stderr


def test_figures_writes_the_paper_illustrations(tmp_path):
    result = _toy("figures", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    for name in ("annealing.png", "annealing_with_reward.png", "naive_vs_product.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")

"""``poe-backend run`` (its parser is built here from the module's ``register``)."""

from __future__ import annotations

import argparse
import json

import pytest

from image_bundles import insertion_bundle
from poe_backend.tasks import cli


def main(argv):
    parser = argparse.ArgumentParser(prog="poe-backend")
    cli.register(parser.add_subparsers(dest="command", required=True))
    arguments = parser.parse_args(argv)
    return arguments.func(arguments)


def test_run_writes_result(tmp_path, capsys):
    insertion_bundle(tmp_path / "b")
    argv = ["run", "--bundle", str(tmp_path / "b"), "--out", str(tmp_path / "out"), "--models", "tiny", "--device", "cpu", "--quiet"]
    argv += ["--param", "levels=2", "--param", "langevin_steps=0", "--param", "particles=1", "--param", "max_sequence_length=16", "--param", "sampler=fkc"]
    assert main(argv) == 0
    manifest = json.loads((tmp_path / "out" / "result.json").read_text())
    assert manifest["task"] == "insertion" and manifest["params"]["sampler"] == "fkc"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (["--param", "levels=1"], "param levels"),
        (["--param", "sampler=magic"], "param sampler"),
        (["--param", "nonsense"], "--param 'nonsense'"),
        (["--task", "regional_t2i"], "bundle task"),
        (["--task", "nope"], "task: unknown task 'nope'"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_field(tmp_path, capsys, extra, field):
    insertion_bundle(tmp_path / "b")
    code = main(["run", "--bundle", str(tmp_path / "b"), "--out", str(tmp_path / "out"), "--models", "tiny", "--quiet", *extra])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in error and field in error, error


def test_bad_bundle_and_missing_weights(tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    assert main(["run", "--bundle", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "bundle bundle.json" in capsys.readouterr().err
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    insertion_bundle(tmp_path / "b")
    code = main(["run", "--bundle", str(tmp_path / "b"), "--out", str(tmp_path / "o"), "--models", "default", "--device", "cpu", "--quiet"])
    error = capsys.readouterr().err
    assert code == 3
    assert "black-forest-labs/FLUX.1-Depth-dev" in error and "black-forest-labs/FLUX.1-Fill-dev" in error and "huggingface-cli download" in error

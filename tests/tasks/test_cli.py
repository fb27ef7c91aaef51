"""``poe-backend run`` through the package's real entry point."""

from __future__ import annotations

import json

import pytest

from tests.tasks.image_bundles import insertion_bundle
from poe_backend.cli import main
from poe_backend.tasks import cli


def test_parse_params_reads_json_values_and_strings():
    assert cli.parse_params(["levels=4", "blend=false", "seed=null", "rf_source_prompt=a table", "guidance=3.5"]) == {
        "levels": 4,
        "blend": False,
        "seed": None,
        "rf_source_prompt": "a table",
        "guidance": 3.5,
    }


def test_run_writes_result(tmp_path, capsys):
    insertion_bundle(tmp_path / "b")
    argv = ["run", "--bundle", str(tmp_path / "b"), "--out", str(tmp_path / "out"), "--models", "tiny", "--device", "cpu", "--quiet"]
    argv += ["--param", "levels=2", "--param", "langevin_steps=0", "--param", "particles=1", "--param", "max_sequence_length=16", "--param", "sampler=fkc"]
    assert main(argv) == 0
    manifest = json.loads((tmp_path / "out" / "result.json").read_text())
    assert manifest["task"] == "insertion" and manifest["params"]["sampler"] == "fkc"
    assert manifest["placement"]["placements"] == {"flux.transformer.depth": "resident", "flux.transformer.fill": "resident"}
    assert manifest["memory"]["peak_host_rss_bytes"] > 0
    printed = capsys.readouterr().out
    assert "placement flux.transformer.depth: resident, flux.transformer.fill: resident; peak device -; peak host RSS" in printed


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
    assert "black-forest-labs/FLUX.1-Depth-dev" in error and "black-forest-labs/FLUX.1-Fill-dev" in error and "hf download" in error and "--include" in error

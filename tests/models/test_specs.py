from __future__ import annotations

import json

import shutil

import pytest

from poe_backend.models import lookup

from poe_backend.models import specs

from poe_backend.runtime import placement


def test_missing_weights_names_repo_revision_command_and_searched_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with pytest.raises(specs.MissingWeights) as caught:
        lookup.resolve("flux.transformer.depth", "default")
    message = str(caught.value)
    assert "black-forest-labs/FLUX.1-Depth-dev" in message
    assert "revision main" in message
    assert "hf download black-forest-labs/FLUX.1-Depth-dev --include 'transformer/*'" in message  # only the subfolder the role needs
    assert str(specs.data_dir() / "models" / "black-forest-labs/FLUX.1-Depth-dev") in message
    assert "models--black-forest-labs--FLUX.1-Depth-dev" in message
    assert caught.value.repo_id == "black-forest-labs/FLUX.1-Depth-dev"
    assert len(caught.value.searched) == 2


def test_preview_falls_back_to_default_and_overrides_vqa():
    assert specs.get_spec("flux.vae", "preview") == specs.get_spec("flux.vae", "default")
    assert specs.get_spec("vqa.model", "preview").repo_id == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert specs.get_spec("vqa.model", "default").repo_id == "Qwen/Qwen2.5-VL-7B-Instruct"


def test_unknown_role_and_preset_are_named():
    with pytest.raises(KeyError, match="flux.nothing"):
        specs.get_spec("flux.nothing")
    with pytest.raises(KeyError, match="no-such-preset"):
        specs.get_spec("flux.vae", "no-such-preset")


def test_json_preset_overrides_a_role_with_a_local_directory(tmp_path):
    weights = tmp_path / "my-vae"
    weights.mkdir()
    preset = tmp_path / "mine.json"
    preset.write_text(json.dumps({"base": "default", "roles": {"flux.vae": {"local_dir": str(weights)}}}))
    assert lookup.resolve("flux.vae", str(preset)) == weights
    assert specs.get_spec("flux.text_encoder", str(preset)).repo_id == "black-forest-labs/FLUX.1-dev"


def test_json_preset_on_the_tiny_base_loads_real_files_never_the_tiny_builder(tmp_path):
    """A ``local_dir`` override of a tiny role names the user's files: when they are missing
    the lookup says so instead of building random weights there."""
    missing = tmp_path / "my-transformer"
    preset = tmp_path / "on-tiny.json"
    preset.write_text(json.dumps({"base": "tiny", "roles": {"wan.transformer.vace": {"local_dir": str(missing)}}}))
    spec = specs.get_spec("wan.transformer.vace", str(preset))
    assert spec.builder is None and spec.local_dir == missing and spec.subfolder is None
    with pytest.raises(specs.MissingWeights, match="my-transformer"):
        lookup.resolve("wan.transformer.vace", str(preset))
    assert not missing.exists()
    assert specs.get_spec("wan.vae", str(preset)).builder is not None  # roles not overridden stay tiny


def test_local_models_dir_is_found_before_the_cache():
    local = specs.data_dir() / "models" / "black-forest-labs/FLUX.1-Fill-dev" / "transformer"
    local.mkdir(parents=True)
    (local / "config.json").write_text("{}")
    (local / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    try:
        assert lookup.resolve("flux.transformer.fill") == local
    finally:
        shutil.rmtree(local.parent)


def test_offload_presets_name_placements_and_unknown_ones_are_refused():
    from poe_backend.runtime.placement import placement_for_offload

    assert placement.OFFLOAD_PRESETS == ("auto", "none", "group", "sequential")  # no whole-model swapping
    with pytest.raises(ValueError, match="offload"):
        placement_for_offload("model")


def test_weight_bytes_of_a_tiny_model_counts_its_files():
    size = lookup.weight_bytes("flux.transformer.dev", "tiny")
    assert size > 0
    assert size == sum(path.stat().st_size for path in lookup.resolve("flux.transformer.dev", "tiny").glob("*.safetensors"))

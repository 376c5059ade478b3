"""data_prepare's config: the shipped files resolve to their settings, keys are PrepareConfig's, --print-config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from data_prepare.__main__ import main
from data_prepare.prepare import PrepareConfig
from segcore.config import load_config
from testkit import restated_keys

ROOT = Path(__file__).resolve().parents[2]
DERIVED = {
    "data_prepare/config.tiny.yaml": {
        "out": "dataset/prepared_tiny.lmdb", "coarse_size": [32, 32, 32], "fine_size": [48, 48, 48]
    },
    "model_weights/recipe/prepare.yaml": {
        "out": "dataset/prepared_default.lmdb", "coarse_size": [48, 48, 48], "fine_size": [80, 80, 80], "workers": 2
    },
}  # fmt: skip


@pytest.mark.parametrize("path", ["data_prepare/config.yaml", *DERIVED])
def test_no_shipped_file_restates_a_default_or_its_base(path):
    assert restated_keys(ROOT / path, dataclasses.asdict(PrepareConfig()), PrepareConfig) == []


def settings(path: Path, overrides: list[str] | None = None) -> dict:
    return dataclasses.asdict(PrepareConfig(**load_config(path, overrides or [], schema=PrepareConfig)))


@pytest.mark.parametrize("derived", DERIVED)
def test_a_derived_config_is_config_yaml_with_the_listed_differences(derived):
    assert settings(ROOT / derived) == {**settings(ROOT / "data_prepare" / "config.yaml"), **DERIVED[derived]}


def test_a_misspelled_key_is_refused_naming_the_file_and_the_key(tmp_path, capsys):
    path = tmp_path / "prepare.yaml"
    path.write_text(f"base: {ROOT / 'data_prepare' / 'config.yaml'}\ncoarse_sise: [8, 8, 8]\n")
    assert main(["--config", str(path), "--print-config"]) == 2
    assert f"{path}: coarse_sise: unknown key; did you mean coarse_size" in capsys.readouterr().err
    assert main(["--config", str(ROOT / "data_prepare" / "config.yaml"), "--print-config", "margin=3"]) == 2
    assert "override 'margin=3': margin: unknown key; did you mean margin_mm?" in capsys.readouterr().err


def test_print_config_prints_the_resolved_settings_and_exits(tmp_path, capsys):
    recipe = ROOT / "model_weights" / "recipe" / "prepare.yaml"
    argv = ["--config", str(recipe), "--print-config", "--data-root", str(tmp_path / "missing"), "body_region=true"]
    assert main(argv) == 0  # before the data root is looked for
    expected = {**settings(recipe), "data_root": str(tmp_path / "missing"), "body_region": True}
    assert yaml.safe_load(capsys.readouterr().out) == expected

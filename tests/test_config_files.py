"""`alexnet train --config FILE` and `--print-config`: the preset, then the file, then flags."""

from __future__ import annotations

import json
from dataclasses import replace
import subprocess
import sys
import tomllib

import pytest

from alexnet.cli import build_parser, train_config
from alexnet.config import PRESETS, RunConfig
from alexnet.config_files import config_text, read_config_file, resolve_config
from alexnet.errors import AlexnetError
from conftest import run_cli

RECIPE = """
preset = "cifar10-fast"

[data]
val_split = 0.2
crop_padding = 2

[model]
widths = [8, 16, 32, 64, 64]

[train]
epochs = 3
lr = 1
label_smoothing = 0.05
"""


def resolve(*argv: str) -> RunConfig:
    return train_config(build_parser().parse_args(["train", *map(str, argv)]))


def test_a_toml_file_sets_options_over_its_preset_and_flags_override_it(tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE)
    cfg = resolve("--config", path, "--lr", "0.3")
    fast = PRESETS["cifar10-fast"]
    assert cfg.preset == "cifar10-fast"
    assert cfg.data.val_split == 0.2 and cfg.data.crop_padding == 2
    assert cfg.model.widths == (8, 16, 32, 64, 64) and cfg.model.pools == fast["model"]["pools"]  # the rest: preset
    assert cfg.train.epochs == 3 and cfg.train.label_smoothing == 0.05 and cfg.train.lr == 0.3
    assert cfg.train.time_limit == 0  # epochs named in the file: the preset's clock no longer applies
    assert resolve("--config", path, "--preset", "cifar10").preset == "cifar10"  # the flag's preset wins


def test_yaml_and_json_files_read_the_same(tmp_path):
    toml = tmp_path / "r.toml"
    toml.write_text(RECIPE)
    data = tomllib.loads(RECIPE)
    (tmp_path / "r.json").write_text(json.dumps(data))
    yaml = pytest.importorskip("yaml")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    expected = resolve("--config", toml)
    assert resolve("--config", tmp_path / "r.json") == expected == resolve("--config", tmp_path / "r.yaml")


def test_a_runs_config_json_reproduces_that_run(trained_run, tmp_path):
    saved = json.loads((trained_run / "config.json").read_text())["config"]
    assert resolve("--config", trained_run / "config.json") == RunConfig.from_dict(saved)
    # --print-config writes TOML that --config reads back to the same config.
    result = run_cli("train", "--config", trained_run / "config.json", "--print-config")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "runs").exists() and "epoch" not in result.stderr  # nothing trained
    printed = tmp_path / "printed.toml"
    printed.write_text(result.stdout)
    assert tomllib.loads(result.stdout)["train"]["epochs"] == saved["train"]["epochs"]
    # The options come back; the record of how the recipe was chosen travels as a comment line.
    assert replace(resolve("--config", printed), recipe=None) == replace(RunConfig.from_dict(saved), recipe=None)
    assert f"# {saved['recipe']['line']}" in result.stdout


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_survives_the_print_and_read_back(preset, tmp_path):
    cfg = resolve("--preset", preset)
    path = tmp_path / "p.toml"
    path.write_text(config_text(cfg))
    assert resolve("--config", path) == cfg


def test_another_model_on_the_command_line_drops_the_files_model_options(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(RECIPE)
    cfg = resolve("--config", path, "--model", "alexnet", "--norm", "batchnorm")
    assert cfg.model.name == "alexnet" and cfg.model.widths is None and cfg.model.norm == "batchnorm"


@pytest.mark.parametrize("text, message", [
    ("[train]\nepoch = 3\n", "unknown key train.epoch; did you mean train.epochs?"),
    ("[trian]\nepochs = 3\n", "unknown key trian; did you mean train?"),
    ("[train]\nepochs = \"ten\"\n", "train.epochs must be an integer, got 'ten'"),
    ("[model]\nwidths = [8, 16, \"x\"]\n", "model.widths must be a list of integers or null"),
    ("[train\nepochs = 3\n", "is not valid TOML"),
])
def test_mistakes_in_a_file_are_one_line_naming_the_key_and_file(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(AlexnetError, match="bad.toml") as e:
        read_config_file(path)
    assert message in str(e.value) and "\n" not in str(e.value)
    result = run_cli("train", "--config", path, "--print-config")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr


def test_yaml_without_pyyaml_names_the_package(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  epochs: 3\n")
    code = ("import sys; sys.modules['yaml'] = None; from alexnet.cli import main; "
            f"sys.exit(main(['train', '--config', {str(path)!r}, '--print-config']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "pip install pyyaml" in result.stderr and result.stderr.count("\n") == 1


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(AlexnetError, match="no such file"):
        resolve_config(None, {}, tmp_path / "none.toml")
    (tmp_path / "r.ini").write_text("x")
    with pytest.raises(AlexnetError, match=r"use \.toml, \.yaml, \.yml or \.json"):
        resolve_config(None, {}, tmp_path / "r.ini")

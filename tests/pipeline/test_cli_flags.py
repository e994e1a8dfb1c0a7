"""Command-line flags come from the config dataclasses: one name, one meaning, help beside each field."""

from __future__ import annotations

import dataclasses
import os
import sys

import pytest

from detcrop.classify.baseline.recipes import BaselineConfig
from detcrop.classify.training import TrainConfig
from detcrop.data.config import config_overrides, field_help
from detcrop.data.validate import ValidationConfig
from detcrop.detect.crop import CropConfig
from detcrop.pipeline.cli import build_parser, main

COMMAND_CONFIGS = {"train": TrainConfig, "baseline": BaselineConfig, "crop": CropConfig, "validate": ValidationConfig}
POSITIONALS = {"train": ["data", "--out", "run"], "baseline": [], "crop": ["photos", "--out", "data"],
               "validate": ["data"]}


@pytest.mark.parametrize("command, config", COMMAND_CONFIGS.items())
def test_every_config_field_is_a_flag_with_its_comment_as_help(command, config):
    from detcrop.classify.config import CLI_FLAGS

    helps = field_help(config)
    parser = build_parser()
    usage = parser._subparsers._group_actions[0].choices[command].format_help()
    for item in dataclasses.fields(config):
        assert helps[item.name], f"{config.__name__}.{item.name} has no comment"
        assert len(helps[item.name].split()) <= 20, f"{config.__name__}.{item.name}: help over 20 words"
        flag = "--" + item.name.replace("_", "-")
        listed = command != "train" or item.name in CLI_FLAGS  # train --help lists the common ones
        assert (flag in usage) == listed, item.name
        if item.type != "bool" and "tuple" not in str(item.type):  # every field is a flag, listed or not
            args = build_parser().parse_args([command, *POSITIONALS[command], flag, "7"])
            assert config_overrides(args, config) == {item.name: "7"}


def test_train_help_lists_at_most_24_option_spellings():
    import argparse

    parser = build_parser()._subparsers._group_actions[0].choices["train"]
    spellings = [option for action in parser._actions if action.help != argparse.SUPPRESS
                 for option in action.option_strings if not option.startswith("--no-")]
    assert len(spellings) <= 24, spellings


@pytest.mark.parametrize("command", ["train", "baseline"])
@pytest.mark.parametrize("flag", ["--input-size", "--image-size"])
def test_a_flag_means_the_same_key_in_every_command(command, flag):
    args = build_parser().parse_args([command, *POSITIONALS[command], flag, "40", "--lr", "0.01", "--seed", "3"])
    assert config_overrides(args, COMMAND_CONFIGS[command]) == {"input_size": "40", "learning_rate": "0.01", "seed": "3"}


def test_list_and_yes_no_flags():
    args = build_parser().parse_args(["crop", "photos", "--out", "data", "--target", "clock", "--target", "cup,vase"])
    assert config_overrides(args, CropConfig) == {"targets": ["clock", "cup", "vase"]}
    args = build_parser().parse_args(["train", "data", "--out", "run", "--no-tta", "--no-class-weights"])
    assert config_overrides(args, TrainConfig) == {"tta_flip": False, "class_weights": False}
    args = build_parser().parse_args(["train", "data", "--out", "run"])
    assert config_overrides(args, TrainConfig) == {}  # flags left out keep the config file's or the default


def test_only_expected_failures_become_one_line_anything_else_keeps_its_traceback(monkeypatch, capsys, tmp_path):
    from detcrop.pipeline import cli
    from detcrop.pipeline.commands import validate

    def bug(args):
        raise ValueError("a bug")

    monkeypatch.setattr(validate, "run", bug)
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["validate", str(tmp_path)])
    monkeypatch.undo()
    assert cli.main(["validate", str(tmp_path / "missing")]) == 2  # MissingFileError: a DetcropError
    assert "dataset folder not found" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["crop", "train"])
def test_without_ray_the_ray_engine_says_how_to_install_it_before_any_work(command, monkeypatch, tmp_path, capsys):
    from detcrop.pipeline.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    (tmp_path / "in").mkdir()
    code = main([command, str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--engine", "ray"])
    error = capsys.readouterr().err
    assert code == 2 and "pip install 'detcrop[ray]'" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["crop", "train"])
def test_ray_address_without_the_ray_engine_is_refused(command, tmp_path, capsys):
    from detcrop.pipeline.cli import main

    (tmp_path / "in").mkdir()
    assert main([command, str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--ray-address", "auto"]) == 2
    assert "--ray-address needs --engine ray" in capsys.readouterr().err


@pytest.mark.parametrize("user_value, expected", [(None, "1"), ("0", "0")])
def test_the_cli_turns_onednn_on_unless_the_user_chose(monkeypatch, user_value, expected):
    """TensorFlow reads TF_ENABLE_ONEDNN_OPTS at import: the CLI sets it first, without overriding a user's 0."""
    if user_value is None:
        monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    else:
        monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", user_value)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == expected

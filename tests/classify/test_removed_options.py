"""Options that did not pay left the product: an old config still loads, a new use is refused naming why."""

from __future__ import annotations

import json
import logging

import pytest

pytest.importorskip("keras")

from detcrop.classify.config import TrainConfig, make_train_config, upgrade_legacy_keys
from detcrop.data.config import ConfigError
from detcrop.pipeline.cli import main

from test_classify_training import make_dataset

#: A run's config.json as `train` wrote it before issue 24 (its removed keys at their old defaults).
OLD_CONFIG = {
    "backbone": "scratch", "weights": "", "input_size": 32, "epochs": 2, "partial_head_epochs": 20, "batch_size": 8,
    "learning_rate": 0.001, "val_ratio": 0.25, "seed": 0, "hidden_units": 0, "dropout": 0.5, "patience": 8,
    "flip_features": True, "tta_flip": True, "class_weights": True, "label_smoothing": 0.1, "train_from": "auto",
    "partial_epochs": 12, "partial_learning_rate": 0.0005, "partial_shift": 1, "partial_mixup": 0.0,
    "partial_batchnorm": False, "refit": True, "partial_zoom": 0.0, "memory_blend": 0.0, "memory_temperature": 0.02,
    "fine_tune_layers": 0, "fine_tune_epochs": 6, "fine_tune_learning_rate": 0.0001, "feature_batch_size": 32,
    "cache_dir": "", "runtime": "auto", "mistakes": 16, "target_accuracy": 0.0, "ensemble": "",
}


@pytest.mark.parametrize("key, value, entry", [
    ("memory_blend", 0.5, "RESULTS.md#memory"),
    ("memory_temperature", 0.1, "RESULTS.md#memory"),
    ("partial_zoom", 0.8, "RESULTS.md#zoomed-views"),
    ("partial_mixup", 0.2, "RESULTS.md#mixup-on-maps"),
    ("partial_batchnorm", True, "RESULTS.md#trained-batchnorm"),
])
def test_a_removed_key_at_another_value_is_refused_naming_its_entry(key, value, entry):
    with pytest.raises(ConfigError, match=entry):
        make_train_config({key: value})


def test_removed_keys_at_their_old_defaults_load_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="detcrop.data.config"):
        config = make_train_config(OLD_CONFIG)
    warnings = [record for record in caplog.records if "removed" in record.getMessage()]
    assert len(warnings) == 1 and "memory_blend" in warnings[0].getMessage()
    assert config.fine_tune == "partial" and config.fine_tune_layers == TrainConfig().fine_tune_layers


@pytest.mark.parametrize("old, fine_tune", [
    ({"train_from": "auto", "fine_tune_layers": 0}, "partial"),
    ({"train_from": "block6a", "fine_tune_layers": 0}, "partial"),
    ({"train_from": "", "fine_tune_layers": 0}, "none"),  # the old `fast` preset
    ({"train_from": "auto", "fine_tune_layers": 12}, "full"),
    ({"train_from": "", "fine_tune_layers": 12}, "full"),
])
def test_old_mode_keys_become_the_fine_tune_strategy(old, fine_tune):
    config = make_train_config(old)
    assert config.fine_tune == fine_tune
    if fine_tune == "full":
        assert config.fine_tune_layers == 12
    assert upgrade_legacy_keys({"fine_tune": "none", "train_from": ""}) == {"fine_tune": "none", "train_from": ""}


@pytest.mark.parametrize("flags, entry", [
    (["--memory-blend", "0.5"], "RESULTS.md#memory"),
    (["--memory-blend", "0"], "RESULTS.md#memory"),  # on the command line, even the old default is refused
    (["--partial-batchnorm"], "RESULTS.md#trained-batchnorm"),
    (["--no-partial-batchnorm"], "RESULTS.md#trained-batchnorm"),
    (["--partial-zoom", "0.8"], "RESULTS.md#zoomed-views"),
    (["--partial-mixup", "0.2"], "RESULTS.md#mixup-on-maps"),
    (["--preset", "best"], "RESULTS.md#preset-best"),
])
def test_a_removed_option_on_the_command_line_exits_2_naming_its_entry(tmp_path, capsys, flags, entry):
    assert main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), *flags]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and entry in error[0] and error[0].startswith("detcrop train: error:")
    assert not (tmp_path / "run").exists()  # refused before any work


def test_an_old_config_json_with_removed_keys_still_trains(tmp_path, capsys):
    dataset = make_dataset(tmp_path / "data", per_class=6)
    old = tmp_path / "old-config.json"
    old.write_text(json.dumps(OLD_CONFIG | {"cache_dir": str(tmp_path / "cache")}))
    assert main(["train", str(dataset), "--out", str(tmp_path / "run"), "--config", str(old), "-q"]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["fine_tune"] == "partial" and "memory_blend" not in saved
    assert (tmp_path / "run" / "model.keras").is_file()

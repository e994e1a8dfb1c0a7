"""The baseline's models, config, serving graph and a whole tiny run."""

from __future__ import annotations

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from detcrop.classify.baseline.model import SEED_PARAMS_CIFAR10, build_fast_cnn, build_seed_cnn, build_serving_model
from detcrop.classify.baseline.recipes import MIN_IMAGE_SIZE, RECIPES, BaselineConfig
from detcrop.classify.baseline.training import (
    EpochRecord,
    model_summary,
    predict_arrays,
    run_baseline,
    time_to_accuracy,
)
from detcrop.classify.baseline.data import ArrayDataset
from detcrop.classify.bundle import load_bundle
from detcrop.data.config import ConfigError, build_config


def test_seed_cnn_has_the_tutorial_parameter_count():
    model = build_seed_cnn((32, 32, 3), 10)
    assert model.count_params() == SEED_PARAMS_CIFAR10 == 122_570
    summary = model_summary(model)
    assert "Total params: 122,570" in summary
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Rescaling", "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Conv2D",
                     "Flatten", "Dense", "Dense"]
    assert [layer.filters for layer in model.layers if hasattr(layer, "filters")] == [32, 64, 64]


@pytest.mark.parametrize("shape, expected", [((28, 28, 1), 93_322), ((MIN_IMAGE_SIZE,) * 2 + (3,), None)])
def test_seed_cnn_builds_at_other_shapes(shape, expected):
    model = build_seed_cnn(shape, 10)
    assert model.output_shape == (None, 10)
    if expected is not None:
        assert model.count_params() == expected


def test_seed_cnn_below_the_minimum_size_fails():
    with pytest.raises(ValueError):
        build_seed_cnn((MIN_IMAGE_SIZE - 1, MIN_IMAGE_SIZE - 1, 3), 10)


def test_fast_cnn_outputs_probabilities():
    model = build_fast_cnn((28, 28, 1), 4)
    output = np.asarray(model(np.zeros((2, 28, 28, 1), np.float32)))
    assert output.shape == (2, 4)
    np.testing.assert_allclose(output.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({}, {"recipe": "seed", "epochs": 10, "batch_size": 32, "learning_rate": 1e-3}),
        ({"recipe": "fast"}, {"epochs": RECIPES["fast"].epochs, "batch_size": RECIPES["fast"].batch_size}),
        ({"recipe": "fast", "epochs": "2", "batch_size": 8}, {"epochs": 2, "batch_size": 8}),
        ({"limit": "100"}, {"limit": 100}),
    ],
)
def test_config_resolves_recipe_defaults(overrides, expected):
    resolved = build_config(BaselineConfig, overrides).resolved()
    for key, value in expected.items():
        assert getattr(resolved, key) == value


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"recipes": "fast"}, "did you mean 'recipe'"),
        ({"recipe": "slow"}, "recipe must be one of seed, fast"),
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"learning_rate": -1}, "learning_rate must be positive"),
        ({"input_size": 8}, "input_size must be at least 18"),
        ({"test_ratio": 1.5}, "test_ratio must be between 0 and 1"),
    ],
)
def test_config_refuses_bad_values(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config(BaselineConfig, overrides)


def test_time_to_accuracy_finds_the_first_epoch_at_the_target():
    records = [EpochRecord(epoch, epoch * 10.0, epoch * 11.0, accuracy, None, None)
               for epoch, accuracy in enumerate([0.5, 0.8, 0.79, 0.9], start=1)]
    assert time_to_accuracy(records, 0.8).epoch == 2
    assert time_to_accuracy(records, 0.85).train_seconds == 40.0
    assert time_to_accuracy(records, 0.95) is None


def test_grayscale_serving_model_takes_rgb_of_any_size():
    keras.utils.set_random_seed(0)
    core = build_seed_cnn((28, 28, 1), 3)
    serving = build_serving_model(core, (28, 28, 1))
    gray = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
    # A gray photo given as RGB (equal channels) is the gray image again after the luma layer.
    rgb = np.repeat(gray, 3, axis=-1)
    np.testing.assert_allclose(np.asarray(serving(rgb.astype(np.float32))), predict_arrays(core, gray), atol=1e-5)
    assert serving(np.zeros((1, 50, 31, 3), np.float32)).shape == (1, 3)
    # Colour matters through the luma weights: pure green is brighter than pure blue.
    green, blue = np.zeros((1, 28, 28, 3), np.float32), np.zeros((1, 28, 28, 3), np.float32)
    green[..., 1], blue[..., 2] = 255, 255
    assert not np.allclose(np.asarray(serving(green)), np.asarray(serving(blue)))


def _toy_data(size: int = 28, channels: int = 1, per_class: int = 24) -> ArrayDataset:
    """Three classes an untrained eye can tell apart: dark, mid-grey and bright images."""
    rng = np.random.default_rng(0)

    def make(count: int):
        labels = np.arange(count) % 3
        images = labels[:, None, None, None] * 100 + rng.integers(0, 40, (count, size, size, channels))
        return images.astype(np.uint8), labels.astype(np.int64)

    x_train, y_train = make(per_class * 3)
    x_test, y_test = make(12)
    return ArrayDataset("toy", ("dark", "mid", "bright"), x_train, y_train, x_test, y_test, source="memory")


@pytest.mark.parametrize("recipe, channels", [("seed", 1), ("fast", 3)])
def test_run_writes_reports_and_a_bundle_that_predicts_like_the_trained_model(tmp_path, recipe, channels):
    data = _toy_data(channels=channels)
    config = build_config(BaselineConfig, {"recipe": recipe, "epochs": 4, "batch_size": 8, "learning_rate": 3e-3})
    summary = run_baseline(config, tmp_path / "run", data=data, progress=False)
    run_dir = tmp_path / "run"
    for name in ("config.json", "metrics.json", "classification_report.txt", "confusion_matrix.png", "curves.png",
                 "mistakes.png", "model.keras", "bundle.json", "training_log.json", "model_summary.txt"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "config.json").read_text())["epochs"] == 4
    log = json.loads((run_dir / "training_log.json").read_text())
    assert [record["epoch"] for record in log["epochs"]] == [1, 2, 3, 4]
    assert all(record["train_seconds"] <= record["wall_seconds"] for record in log["epochs"])
    assert summary["metrics"]["accuracy"] > 0.5  # chance is 1/3 on three brightness levels

    bundle = load_bundle(run_dir)
    assert bundle.class_names == ("dark", "mid", "bright") and bundle.input_size == 28
    assert bundle.metadata.backbone == f"{recipe}_cnn"
    rgb = np.repeat(data.x_test, 3, axis=-1) if channels == 1 else data.x_test
    loaded = bundle.predict(list(rgb))
    expected = json.loads((run_dir / "metrics.json").read_text())
    assert float((loaded.argmax(axis=1) == data.y_test).mean()) == pytest.approx(expected["accuracy"])
    # Bigger photos go through the in-graph resize.
    assert bundle.predict([np.full((90, 60, 3), 255, np.uint8)]).shape == (1, 3)

"""The nearest-neighbour memory beside the head: its Keras model, its numpy twin, and `train`'s use of it."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("keras")

from detcrop.classify.bundle import load_bundle
from detcrop.classify.calibration import coverage_table
from detcrop.classify.memory import blend_probabilities, blend_with_memory, memory_probabilities
from detcrop.classify.training import build_head, train
from detcrop.data.config import ConfigError
from detcrop.data.images import load_image_array

from test_classify_training import make_dataset, quick_config


def _memory(rows=20, channels=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, channels)).astype(np.float32), rng.integers(0, classes, rows)


def test_the_memory_model_is_its_numpy_twin_blended_with_the_head():
    memory, labels = _memory()
    head = build_head(8, 3, dropout=0.5, seed=0, hidden_units=4)
    queries = np.random.default_rng(1).normal(size=(6, 8)).astype(np.float32)
    from_head = np.asarray(head(queries, training=False))
    from_memory = memory_probabilities(queries, memory, labels, 3, temperature=0.1)
    np.testing.assert_allclose(from_memory.sum(axis=1), 1.0, atol=1e-6)
    for blend in (0.0, 0.5, 1.0):
        model = blend_with_memory(head, memory, labels, 3, temperature=0.1, blend=blend)
        np.testing.assert_allclose(np.asarray(model(queries, training=False)),
                                   blend_probabilities(from_head, from_memory, blend), atol=1e-5)
    assert not blend_with_memory(head, memory, labels, 3, 0.1, 0.5).get_layer("memory_similarity").trainable


def test_a_photo_like_a_remembered_one_takes_its_label():
    memory, labels = _memory(rows=30, channels=16, classes=4)
    labels[7] = 2
    query = memory[7:8] * 3.0 + np.random.default_rng(2).normal(scale=0.05, size=(1, 16))  # the scale does not matter
    votes = memory_probabilities(query, memory, labels, 4, temperature=0.02)[0]
    assert votes.argmax() == 2 and votes[2] > 0.9
    # A high temperature lets every remembered image vote alike: the class shares of the memory.
    flat = memory_probabilities(query, memory, labels, 4, temperature=1e6)[0]
    np.testing.assert_allclose(flat, np.bincount(labels, minlength=4) / 30, atol=1e-4)


def test_a_memory_needs_one_label_per_row():
    memory, labels = _memory()
    with pytest.raises(ValueError, match="one label per row"):
        blend_with_memory(build_head(8, 3, 0.5, 0), memory, labels[:-1], 3, 0.02, 0.5)


@pytest.mark.parametrize("overrides, message", [
    ({"memory_blend": 1.5}, "memory_blend must be in"), ({"memory_blend": -0.1}, "memory_blend must be in"),
    ({"memory_temperature": 0.0}, "memory_blend must be in"),
    ({"memory_blend": 0.5, "fine_tune_layers": 3, "train_from": "auto"}, "does not go with fine_tune_layers")])
def test_bad_memory_settings_are_refused(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        quick_config(tmp_path, **overrides)


def _memory_kernel(run_dir) -> np.ndarray:
    """The bundle's memory: (features, remembered images), unit rows over the temperature."""
    model = load_bundle(run_dir).model
    return next(layer for layer in model.layers if layer.name == "head_and_memory") \
        .get_layer("memory_similarity").get_weights()[0]


def _pooled(run_dir, paths) -> np.ndarray:
    """The bundle's own pooled features of `paths`, from pixels."""
    import keras

    model = load_bundle(run_dir).model
    pooled = keras.Model(model.input, model.get_layer("pool").output)
    return np.concatenate([np.asarray(pooled(load_image_array(path)[None].astype(np.float32))) for path in paths])


@pytest.mark.parametrize("train_from", ["", "conv2"])
def test_train_remembers_the_train_images_and_val_too_when_refit(tmp_path, monkeypatch, train_from):
    from detcrop.classify import training

    # Partial fine-tuning always wins here, so that its memory (and its refit) is what gets tested.
    monkeypatch.setattr(training, "head_val_accuracy", lambda *args: -1.0)
    dataset = make_dataset(tmp_path / "data", per_class=8)
    runs = {}
    for refit in (False, True):
        config = quick_config(tmp_path, train_from=train_from, partial_epochs=2, epochs=2, refit=refit,
                              memory_blend=0.5)
        runs[refit] = train(dataset, tmp_path / f"run-{refit}", config, progress=False)
    split = json.loads((tmp_path / "run-False" / "split.json").read_text())
    refit_members = runs[True].metrics["refit"]
    assert refit_members == (["scratch"] if train_from else [])  # a frozen head is never refit
    assert _memory_kernel(tmp_path / "run-False").shape[1] == len(split["train"])
    remembered = sorted(split["train"] + (split["val"] if refit_members else []))
    kernel = _memory_kernel(tmp_path / "run-True")
    assert kernel.shape[1] == len(remembered)
    # The memory is the bundle's own features of those images (after the refit, when there was one).
    expected = _pooled(tmp_path / "run-True", remembered)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    cosine = (kernel.T / np.linalg.norm(kernel.T, axis=1, keepdims=True) * expected).sum(axis=1)
    assert cosine.min() > 0.999, cosine.min()
    # Without refit the bundle is the validated model, memory included: it reproduces the val figures.
    bundle = load_bundle(tmp_path / "run-False")
    images = [load_image_array(path) for path in split["val"]]
    labels = np.array([bundle.class_names.index(path.split("/")[-2]) for path in split["val"]])
    probabilities = bundle.predict(images)
    assert float((probabilities.argmax(1) == labels).mean()) == pytest.approx(runs[False].metrics["accuracy"])
    # The coverage table's thresholds are val confidences: the reported ones are the bundle's, memory blended in
    # (val was scored from cached float16 maps, the bundle from pixels: a little rounding apart).
    for mine, reported in zip(coverage_table(probabilities, labels), runs[False].metrics["coverage"]):
        assert mine["threshold"] == pytest.approx(reported["threshold"], abs=1e-3)


def test_by_default_the_bundle_is_the_head_alone(tmp_path):
    dataset = make_dataset(tmp_path / "data", per_class=6)
    train(dataset, tmp_path / "run", quick_config(tmp_path, train_from="", epochs=2), progress=False)
    assert all("memory" not in layer.name for layer in load_bundle(tmp_path / "run").model.layers)

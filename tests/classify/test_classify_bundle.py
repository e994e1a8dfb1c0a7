"""Save a bundle, load it back, and get identical predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from detcrop.classify.bundle import (
    BUNDLE_NAME,
    MODEL_NAME,
    BundleError,
    BundleMetadata,
    load_bundle,
    read_bundle_metadata,
    resize_images,
    resize_layer,
    save_bundle,
)
from detcrop.data.errors import DetcropError


def _tiny_model(input_size: int = 16, classes: int = 3) -> "keras.Model":
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = resize_layer(input_size)(inputs)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def _metadata(**overrides) -> dict:
    return {"class_names": ["a", "b", "c"], "input_size": 16, "backbone": "scratch", "weights_source": "none",
            "metrics": {"accuracy": 0.5}, "config": {"epochs": 1}} | overrides


def test_save_load_gives_identical_predictions(tmp_path):
    model = _tiny_model()
    save_bundle(tmp_path, model, _metadata(crop_config={"margin": 0.1}))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size, dtype=np.uint8) for size in [(16, 16, 3), (40, 23, 3), (9, 30, 3)]]
    bundle = load_bundle(tmp_path)
    loaded = bundle.predict(images)
    original = np.concatenate([model.predict(image[None].astype("float32"), verbose=0) for image in images])
    np.testing.assert_allclose(loaded, original, atol=1e-6)
    assert loaded.shape == (3, 3)
    np.testing.assert_allclose(loaded.sum(axis=1), 1.0, atol=1e-5)
    assert bundle.class_names == ("a", "b", "c") and bundle.input_size == 16
    metadata = json.loads((tmp_path / BUNDLE_NAME).read_text())
    assert metadata["crop_config"] == {"margin": 0.1}
    assert set(metadata["versions"]) == {"tf", "keras", "numpy", "detcrop"}
    assert not list(tmp_path.glob(".*part*"))


def test_resize_images_matches_layer_and_keeps_same_size_images():
    image = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    np.testing.assert_array_equal(resize_images([image], 8)[0], image)
    np.testing.assert_array_equal(np.asarray(resize_layer(8)(image[None].astype("float32")))[0], image)
    assert resize_images([np.zeros((5, 7, 3), np.uint8)], 8).shape == (1, 8, 8, 3)
    with pytest.raises(ValueError, match="expected an HxWx3"):
        resize_images([np.zeros((5, 7), np.uint8)], 8)


@pytest.mark.parametrize(
    "remove, message",
    [(BUNDLE_NAME, "bundle metadata not found"), (MODEL_NAME, "model file not found")],
)
def test_load_bundle_names_the_missing_file(tmp_path, remove, message):
    save_bundle(tmp_path, _tiny_model(), _metadata())
    (tmp_path / remove).unlink()
    with pytest.raises(FileNotFoundError, match=message):
        load_bundle(tmp_path)


def test_save_bundle_checks_metadata(tmp_path):
    with pytest.raises(BundleError, match="missing keys weights_source"):
        save_bundle(tmp_path, _tiny_model(), {k: v for k, v in _metadata().items() if k != "weights_source"})
    with pytest.raises(BundleError, match="3 outputs but metadata names 2"):
        save_bundle(tmp_path, _tiny_model(), _metadata(class_names=["a", "b"]))
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        load_bundle(tmp_path / "nope")


def test_bundle_json_is_read_into_a_frozen_validated_type(tmp_path):
    save_bundle(tmp_path, _tiny_model(), _metadata(unknown_threshold=0.4, tta_flip=True))
    metadata = read_bundle_metadata(tmp_path)
    assert isinstance(metadata, BundleMetadata)
    assert metadata.class_names == ("a", "b", "c") and metadata.unknown_threshold == 0.4 and metadata.tta_flip
    with pytest.raises(AttributeError):
        metadata.input_size = 32  # frozen
    assert BundleMetadata.from_dict(json.loads((tmp_path / BUNDLE_NAME).read_text())) == metadata
    assert load_bundle(tmp_path).metadata == metadata


@pytest.mark.parametrize(
    "change, message",
    [
        ({"class_name": ["a"]}, r"unknown keys 'class_name' \(did you mean 'class_names'\?\)"),
        ({"detector_path": "/tmp/x"}, "unknown keys 'detector_path'; known keys: class_names"),
        ({"input_size": None}, "input_size must be a positive integer"),
        ({"input_size": "16"}, "input_size must be a positive integer"),
        ({"class_names": "abc"}, "class_names must be a list"),
        ({"class_names": ["a", "a", "c"]}, "class_names must be distinct"),
        ({"unknown_threshold": 2}, r"unknown_threshold must be null or a number in \[0, 1\]"),
        ({"bundle_version": 99}, "bundle_version must be an integer from 1 to 1"),
        ({"tta_flip": "yes"}, "tta_flip must be true or false"),
        ({"crop_config": []}, "crop_config must be null or an object"),
    ],
)
def test_a_bad_bundle_json_is_refused_naming_the_file_and_key(tmp_path, change, message):
    save_bundle(tmp_path, _tiny_model(), _metadata())
    path = tmp_path / BUNDLE_NAME
    data = json.loads(path.read_text())
    if "class_name" in change:
        del data["class_names"]
    data.update(change)
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=message) as error:
        load_bundle(tmp_path)
    assert str(error.value).startswith(str(path)) and isinstance(error.value, DetcropError)


def test_a_bundle_json_missing_a_key_is_refused(tmp_path):
    save_bundle(tmp_path, _tiny_model(), _metadata())
    path = tmp_path / BUNDLE_NAME
    data = json.loads(path.read_text())
    del data["backbone"]
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=f"{path}: missing keys backbone"):
        read_bundle_metadata(tmp_path)

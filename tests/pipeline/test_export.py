"""Export parity: SavedModel and TFLite give the bundle's probabilities on real photos."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from detcrop.classify.bundle import RESIZE_LAYER_NAME, load_bundle, save_bundle
from detcrop.classify.export import ExportedModel, export_bundle
from detcrop.pipeline.cli import main

CLASSES = ("a", "b", "c")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Resizing(48, 48, antialias=True, name=RESIZE_LAYER_NAME)(inputs)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax")(keras.layers.Dense(64, activation="relu")(x))
    run = tmp_path_factory.mktemp("run")
    save_bundle(run, keras.Model(inputs, outputs), {
        "class_names": list(CLASSES), "input_size": 48, "backbone": "test", "weights_source": "random",
        "metrics": {}, "config": {}, "tta_flip": True,
    })
    return run


@pytest.fixture(scope="module")
def real_photos():
    skimage_data = pytest.importorskip("skimage.data")
    photos = [skimage_data.chelsea(), skimage_data.coffee(), skimage_data.rocket()]
    return [np.ascontiguousarray(photo[..., :3]) for photo in photos]


# Tolerances: float32 export paths differ from Keras only by op fusion order (1e-5); int8
# weights (tensors of 1024+ values) move probabilities by a few hundredths at most here.
@pytest.mark.parametrize("export_format, quantize, tolerance", [
    ("savedmodel", False, 1e-5),
    ("tflite", False, 1e-5),
    ("tflite", True, 0.05),
    ("onnx", False, 1e-5),
])
def test_export_parity_on_real_photos(run_dir, real_photos, tmp_path, export_format, quantize, tolerance):
    out = tmp_path / "export"
    export_bundle(run_dir, out, export_format, quantize)
    assert (out / "labels.txt").read_text().split() == list(CLASSES)
    meta = json.loads((out / "export.json").read_text())
    assert meta["format"] == export_format and meta["quantized"] == quantize
    expected = load_bundle(run_dir).predict(real_photos, tta_flip=False)
    received = ExportedModel(out).predict(real_photos)
    assert received.shape == (3, 3)
    np.testing.assert_allclose(received, expected, atol=tolerance)
    assert not any(path.name.endswith(".part") for path in tmp_path.iterdir())


def test_quantized_tflite_is_smaller(run_dir, tmp_path):
    plain = export_bundle(run_dir, tmp_path / "plain", "tflite")
    small = export_bundle(run_dir, tmp_path / "small", "tflite", quantize=True)
    assert small.stat().st_size < plain.stat().st_size


@pytest.mark.parametrize("argv, message", [
    (["--format", "savedmodel", "--quantize"], "tflite only"),
])
def test_export_cli_refuses(run_dir, tmp_path, capsys, argv, message):
    assert main(["export", str(run_dir), "--out", str(tmp_path / "x"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_export_cli_replaces_and_checks(run_dir, tmp_path, capsys):
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "exported"
    export_bundle(run_dir, out, "savedmodel")
    assert main(["export", str(run_dir), "--out", str(out), "--format", "tflite", "--check", str(photo)]) == 0
    printed = capsys.readouterr().out
    assert "top-1 agreement 100.0%" in printed
    assert sorted(path.name for path in out.iterdir()) == ["export.json", "labels.txt", "model.tflite"]


def _folder_with(folder, name):
    folder.mkdir()
    (folder / name).write_text("not an export")
    return folder


@pytest.mark.parametrize("make_out, message", [
    (lambda run, tmp: run, "run folder"),
    (lambda run, tmp: run.parent, "run folder"),
    (lambda run, tmp: _folder_with(tmp / "precious", "thesis.txt"), "not an earlier export"),
])
def test_export_never_replaces_the_run_or_unrelated_folders(run_dir, tmp_path, make_out, message):
    out = make_out(run_dir, tmp_path)
    before = sorted(path.name for path in out.iterdir())
    with pytest.raises(ValueError, match=message):
        export_bundle(run_dir, out, "tflite")
    assert sorted(path.name for path in out.iterdir()) == before


def test_export_files_are_readable_by_others(run_dir, tmp_path):
    from detcrop.data.atomic import current_umask

    out = tmp_path / "export"
    export_bundle(run_dir, out, "tflite")
    assert out.stat().st_mode & 0o777 == 0o777 & ~current_umask()
    assert (out / "model.tflite").stat().st_mode & 0o777 == 0o666 & ~current_umask()

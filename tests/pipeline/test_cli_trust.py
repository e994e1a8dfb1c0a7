"""The CLI against a full disk, unwritable outputs and a run whose model.keras was swapped (issue 25,
rows 8 and 9): one line naming the path and the reason, exit 2, never a traceback."""

from __future__ import annotations

import errno
import json
import zipfile

import keras
import numpy as np
import pytest

from detcrop.pipeline.cli import main
from imagegen import make_class_folders, save_image
from test_trust_boundaries import _one_line_refusal, loaded_detectors, make_run  # noqa: F401 (a fixture)


# ---------------------------------------------------------------- row 8: outputs the system refuses
@pytest.fixture()
def full_disk(monkeypatch):
    """Every atomic write fails as on a full disk, after its data was handed to the kernel."""
    import detcrop.data.atomic

    def fsync(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(detcrop.data.atomic.os, "fsync", fsync)


@pytest.mark.parametrize("command", ["train", "crop"])
def test_a_full_disk_is_one_line_naming_the_path(tmp_path, capsys, loaded_detectors, full_disk, command):
    dataset = make_class_folders(tmp_path / "dataset", {"a": 6, "b": 6}, size=32)
    out = tmp_path / "out"
    argv = {"train": ["train", str(dataset), "--out", str(out), "--backbone", "scratch", "--image-size", "32",
                      "--epochs", "1", "--cache-dir", str(tmp_path / "cache"), "-q"],
            "crop": ["crop", str(dataset), "--out", str(out), "-q"]}[command]
    assert main(argv) == 2
    error = _one_line_refusal(capsys, "No space left on device")
    assert str(out if command == "crop" else tmp_path) in error


def test_export_to_a_place_nothing_can_be_written_is_one_line(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert main(["export", str(run), "--out", "/proc/self/x"]) == 2
    _one_line_refusal(capsys, "/proc/self/x")


@pytest.mark.parametrize("flag", ["--json", "--csv", "--plot"])
def test_predict_checks_its_outputs_before_it_scores(tmp_path, capsys, loaded_detectors, flag):
    run = make_run(tmp_path / "run")
    photo = save_image(tmp_path / "photos" / "p.png", seed=1)
    target = "/proc/self/detcrop-out" + ("" if flag == "--plot" else ".json")
    assert main(["predict", str(run), str(photo), flag, target]) == 2
    _one_line_refusal(capsys, f"cannot write {target}")
    assert loaded_detectors == []  # refused before any model loaded, let alone scored a photo


# ---------------------------------------------------------------- row 9: a model.keras that cannot load safely
def _lambda_model(path):
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Lambda(lambda batch: batch * 2.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x)).save(path)


def _unregistered_class(path):
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(files["config.json"])
    layer = config["config"]["layers"][-1]
    layer.update({"module": "evil.layers", "class_name": "NotRegistered", "registered_name": "evil>NotRegistered"})
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, payload in files.items():
            archive.writestr(name, payload)


def _truncated(path):
    path.write_bytes(path.read_bytes()[:1000])


@pytest.mark.parametrize("swap", [_lambda_model, _unregistered_class, _truncated])
@pytest.mark.parametrize("command", ["predict", "export", "evaluate"])
def test_a_model_that_cannot_load_safely_is_one_line(tmp_path, capsys, loaded_detectors, swap, command):
    run = make_run(tmp_path / "run")
    swap(run / "model.keras")
    photo = save_image(tmp_path / "photos" / "p.png", seed=1)
    dataset = make_class_folders(tmp_path / "dataset", {"a": 2, "b": 2})
    argv = {"predict": ["predict", str(run), str(photo)],
            "export": ["export", str(run), "--out", str(tmp_path / "export")],
            "evaluate": ["evaluate", str(run), str(dataset)]}[command]
    assert main(argv) == 2
    _one_line_refusal(capsys, "this run's model cannot be loaded safely")

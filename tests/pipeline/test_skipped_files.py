"""Every command reports the files it ignores the same way (issue 10 row 14)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from PIL import Image

from detcrop.classify.bundle import RESIZE_LAYER_NAME, save_bundle
from detcrop.data.folders import Skipped, format_skipped
from detcrop.detect.detections import Detections
from detcrop.pipeline.cli import main


class NothingFound:
    name = "nothing-found"

    def detect(self, image):
        return Detections.empty((image.shape[1], image.shape[0]))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The smallest bundle `predict` loads: resize, mean colour, two classes."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Resizing(8, 8, name=RESIZE_LAYER_NAME)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    run = tmp_path_factory.mktemp("run")
    save_bundle(run, keras.Model(inputs, outputs), {
        "class_names": ["a", "b"], "input_size": 8, "backbone": "test", "weights_source": "fixed",
        "metrics": {}, "config": {}, "crop_config": {}, "unknown_threshold": 0.5,
    })
    return run


@pytest.fixture
def photos(tmp_path, monkeypatch):
    from detcrop.detect import base

    monkeypatch.setattr(base, "load_detector", lambda name, **kwargs: NothingFound())
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(folder / "a.png")
    (folder / "notes.txt").write_text("not a photo")
    return folder


COMMANDS = {
    "crop": lambda photos, tmp_path, run: ["crop", str(photos), "--out", str(tmp_path / "out"), "--label", "a"],
    "predict": lambda photos, tmp_path, run: ["predict", str(run), str(photos), "--no-detect"],
    "add": lambda photos, tmp_path, run: ["add", str(tmp_path / "dataset"), "a", str(photos)],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_ignored_file_is_reported_the_same_way_by_every_command(command, photos, tmp_path, run_dir, capsys):
    assert main([*COMMANDS[command](photos, tmp_path, run_dir), "-q"]) == 0
    error = capsys.readouterr().err
    expected = format_skipped([Skipped(photos / "notes.txt", "extension '.txt' is not an image extension "
                                                             "(.bmp, .gif, .jpeg, .jpg, .png, .webp)")])
    assert "\n".join(expected) in error


def test_add_reports_unreadable_images_in_the_same_list(photos, tmp_path, capsys):
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    assert main(["add", str(tmp_path / "dataset"), "a", str(photos), "-q"]) == 0
    error = capsys.readouterr().err
    assert "skipped 2 file(s):" in error and f"{photos / 'broken.jpg'}: " in error
    assert f"{photos / 'notes.txt'}: extension '.txt'" in error


def test_long_lists_are_cut():
    lines = format_skipped([Skipped(f"f{index}.txt", "why") for index in range(12)], limit=10)
    assert lines[0] == "skipped 12 file(s):" and lines[-1] == "  ... and 2 more" and len(lines) == 12

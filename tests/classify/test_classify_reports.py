"""Metrics, text summary and report files of `classify.reports`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detcrop.classify.reports import evaluate_predictions, format_summary, worst_mistakes, write_reports

NAMES = ["cat", "dog", "owl"]


def test_evaluate_predictions_counts_and_f1():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    # Predictions: 0, 1, 1, 1, 2, 0 -> 4 right of 6.
    probabilities = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.8 + 0.2 / 3
    metrics = evaluate_predictions(y_true, probabilities, NAMES)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert metrics["per_class"]["dog"] == {"precision": pytest.approx(2 / 3), "recall": 1.0,
                                           "f1": pytest.approx(0.8), "support": 2}
    cat_f1 = 0.5
    owl_f1 = 2 * 1.0 * 0.5 / 1.5
    assert metrics["macro_f1"] == pytest.approx((cat_f1 + 0.8 + owl_f1) / 3)
    assert metrics["class_names"] == NAMES
    json.dumps(metrics)  # JSON-ready


@pytest.mark.parametrize(
    "y_true, probabilities, message",
    [
        (np.array([0, 1]), np.ones((3, 3)) / 3, "2 labels but probabilities has 3 rows"),
        (np.array([0, 1]), np.ones((2, 2)) / 2, "2 columns but there are 3 class names"),
        (np.array([0, 5]), np.ones((2, 3)) / 3, "labels must be in"),
        (np.array([0, 1]), np.ones(2), "must be \\(samples, classes\\)"),
    ],
)
def test_evaluate_predictions_rejects_mismatched_inputs(y_true, probabilities, message):
    with pytest.raises(ValueError, match=message):
        evaluate_predictions(y_true, probabilities, NAMES)


def test_worst_mistakes_orders_by_confidence_and_skips_correct():
    images = [np.full((4, 4, 3), value, np.uint8) for value in range(4)]
    y_true = np.array([0, 1, 2, 0])
    probabilities = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.05, 0.9, 0.05], [0.1, 0.2, 0.7]])
    mistakes = worst_mistakes(images, y_true, probabilities, limit=5)
    assert [(int(image[0, 0, 0]), true, predicted) for image, true, predicted, _ in mistakes] == [
        (2, 2, 1), (3, 0, 2), (1, 1, 0)
    ]
    assert mistakes[0][3] == pytest.approx(0.9)
    assert len(worst_mistakes(images, y_true, probabilities, limit=1)) == 1


def test_write_reports_writes_non_empty_files(tmp_path):
    y_true = np.array([0, 1, 2, 2])
    probabilities = np.eye(3)[[0, 2, 2, 1]]
    metrics = evaluate_predictions(y_true, probabilities, NAMES)
    images = [np.zeros((8, 8, 3), np.uint8)] * 4
    history = {"acc": [0.5, 0.7], "val_acc": [0.4, 0.6], "loss": [1.0, 0.8], "val_loss": [1.1, 0.9],
               "lr": [1e-3, 1e-3]}
    paths = write_reports(tmp_path, metrics, history, worst_mistakes(images, y_true, probabilities))
    assert set(paths) == {"metrics", "report", "confusion_matrix", "curves", "mistakes"}
    for path in paths.values():
        assert path.stat().st_size > 0
    assert paths["confusion_matrix"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths["metrics"].read_text())["accuracy"] == 0.5
    assert "owl" in paths["report"].read_text()
    assert not list(tmp_path.glob("*.part"))


def test_write_reports_without_history_or_mistakes(tmp_path):
    metrics = evaluate_predictions(np.array([0]), np.array([[1.0, 0.0, 0.0]]), NAMES)
    assert set(write_reports(tmp_path, metrics)) == {"metrics", "report", "confusion_matrix"}
    assert not (tmp_path / "curves.png").exists()


def test_format_summary_names_the_common_confusion():
    metrics = evaluate_predictions(np.array([0, 0, 0, 1]), np.eye(3)[[1, 1, 0, 1]], NAMES)
    summary = format_summary(metrics)
    assert "accuracy 0.5000" in summary
    assert "cat -> dog: 2" in summary
    assert len(summary.splitlines()) < 40

"""The unknown threshold chosen from validation predictions."""

from __future__ import annotations

import numpy as np
import pytest

from detcrop.classify.calibration import choose_unknown_threshold


@pytest.mark.parametrize("probabilities, labels, keep, expected", [
    ([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]], [0, 0, 1], 0.5, 0.8),
    ([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]], [0, 0, 1], 1.0, 0.6),
    ([[0.9, 0.1], [0.6, 0.4]], [1, 1], 0.95, 0.55),  # nothing right: the floor
    ([[0.34, 0.33, 0.33]] * 4, [0] * 4, 0.95, 0.4),  # near-uniform output: the floor, above it
])
def test_threshold_rows(probabilities, labels, keep, expected):
    assert choose_unknown_threshold(np.array(probabilities), np.array(labels), keep) == pytest.approx(expected)


def test_threshold_keeps_the_asked_share_of_correct_predictions():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 5)) * 3
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = probabilities.argmax(axis=1)
    threshold = choose_unknown_threshold(probabilities, labels, 0.9)
    kept = (probabilities.max(axis=1) >= threshold).mean()
    assert 0.89 <= kept <= 0.91


@pytest.mark.parametrize("probabilities, labels, keep, message", [
    ([0.5, 0.5], [0], 0.9, "expected"),
    ([[0.5, 0.5]], [0], 0.0, "keep_correct"),
])
def test_threshold_refuses(probabilities, labels, keep, message):
    with pytest.raises(ValueError, match=message):
        choose_unknown_threshold(np.array(probabilities), np.array(labels), keep)

"""Choosing the probability under which a prediction is reported as `unknown`."""

from __future__ import annotations

import numpy as np


def choose_unknown_threshold(probabilities: np.ndarray, y_true: np.ndarray, keep_correct: float = 0.95) -> float:
    """The top-probability threshold that keeps `keep_correct` of the correct validation predictions.

    Validation data has no "none of these" examples, so the threshold cannot be fitted to
    reject them; what can be controlled is the cost on known classes: at most
    1 - `keep_correct` of the predictions that were right get turned into `unknown`. Never
    below chance (1 / classes), so a near-uniform output is always unknown.

    >>> choose_unknown_threshold(np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]), np.array([0, 0, 1]), 0.5)
    0.8
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    y_true = np.asarray(y_true)
    if probabilities.ndim != 2 or len(probabilities) != len(y_true):
        raise ValueError(f"expected (N, classes) probabilities and N labels, got {probabilities.shape} and {y_true.shape}")
    if not 0.0 < keep_correct <= 1.0:
        raise ValueError(f"keep_correct must be in (0, 1], got {keep_correct}")
    chance = 1.0 / probabilities.shape[1]
    floor = chance + 0.1 * (1.0 - chance)
    top = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    if not correct.any():
        return round(floor, 4)
    return round(float(max(np.quantile(top[correct], 1.0 - keep_correct), floor)), 4)

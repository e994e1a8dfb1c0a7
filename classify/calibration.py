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


def accuracy_coverage_curve(probabilities: np.ndarray, y_true: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(threshold, coverage, accuracy) arrays: answering only when the top probability >= threshold.

    One point per distinct top probability, highest threshold first: coverage is the share of
    predictions answered, accuracy the share of answered ones that are right.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    y_true = np.asarray(y_true)
    if probabilities.ndim != 2 or len(probabilities) != len(y_true) or not len(y_true):
        raise ValueError(f"expected (N, classes) probabilities and N labels, got {probabilities.shape} and {y_true.shape}")
    top = probabilities.max(axis=1)
    order = np.argsort(-top, kind="stable")
    correct = (probabilities.argmax(axis=1) == y_true)[order]
    top = top[order]
    answered = np.arange(1, len(top) + 1)
    accuracy = np.cumsum(correct) / answered
    # Equal probabilities are answered together: keep the last point of each run of ties.
    last = np.r_[top[1:] != top[:-1], True]
    return top[last], answered[last] / len(top), accuracy[last]


def threshold_for_accuracy(probabilities: np.ndarray, y_true: np.ndarray, target: float) -> tuple[float, bool]:
    """(threshold, reached): the lowest threshold whose answered predictions are right at least `target` of the time.

    The lowest such threshold answers the most. When no threshold reaches `target`, the one
    with the best accuracy over at least 5% of the predictions is returned with reached=False.

    >>> threshold_for_accuracy(np.array([[0.9, 0.1], [0.7, 0.3], [0.4, 0.6]]), np.array([0, 1, 1]), 0.9)
    (0.9, True)
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target accuracy must be in (0, 1], got {target}")
    thresholds, coverage, accuracy = accuracy_coverage_curve(probabilities, y_true)
    reaching = np.flatnonzero(accuracy >= target)
    if len(reaching):
        return round(float(thresholds[reaching[-1]]), 6), True
    enough = coverage >= 0.05
    candidates = np.flatnonzero(enough) if enough.any() else np.arange(len(accuracy))
    best = candidates[np.argmax(accuracy[candidates])]
    return round(float(thresholds[best]), 6), False


def coverage_table(probabilities: np.ndarray, y_true: np.ndarray,
                   coverages: tuple[float, ...] = (1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)) -> list[dict]:
    """Rows {coverage, threshold, accuracy}: the accuracy when answering only the most confident `coverage`."""
    thresholds, covered, accuracy = accuracy_coverage_curve(probabilities, y_true)
    rows = []
    for wanted in coverages:
        index = int(np.searchsorted(covered, wanted - 1e-9))  # first point answering at least `wanted`
        index = min(index, len(covered) - 1)
        rows.append({"coverage": round(float(covered[index]), 4), "threshold": round(float(thresholds[index]), 4),
                     "accuracy": round(float(accuracy[index]), 4)})
    return rows

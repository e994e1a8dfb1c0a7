"""How good is a classifier, per class: metrics, text report, confusion matrix and plots.

`evaluate_predictions` turns labels and probabilities into one JSON-ready dict;
`write_reports` writes it into a run folder (metrics.json, classification_report.txt,
confusion_matrix.png, curves.png, mistakes.png), each file atomically. Plots use
matplotlib's Agg backend, so no display is needed.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from detcrop.data.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text

#: File names written by `write_reports`.
METRICS_NAME = "metrics.json"
REPORT_NAME = "classification_report.txt"
CONFUSION_NAME = "confusion_matrix.png"
CURVES_NAME = "curves.png"
MISTAKES_NAME = "mistakes.png"


def _check_inputs(y_true: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).astype(np.int64).reshape(-1)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2:
        raise ValueError(f"probabilities must be (samples, classes), got shape {probabilities.shape}")
    if probabilities.shape[0] != y_true.shape[0]:
        raise ValueError(
            f"y_true has {y_true.shape[0]} labels but probabilities has {probabilities.shape[0]} rows"
        )
    if probabilities.shape[1] != len(class_names):
        raise ValueError(
            f"probabilities has {probabilities.shape[1]} columns but there are {len(class_names)} class names"
        )
    if y_true.size and (y_true.min() < 0 or y_true.max() >= len(class_names)):
        raise ValueError(f"labels must be in [0, {len(class_names)}), got {y_true.min()}..{y_true.max()}")
    return y_true, probabilities


def evaluate_predictions(y_true: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]) -> dict:
    """Accuracy, macro and weighted F1, per-class precision/recall/F1/support and the confusion matrix.

    The prediction is the arg-max of each row. Classes absent from `y_true` still get a row
    (support 0); undefined precision or recall count as 0 (scikit-learn ``zero_division=0``).

    >>> metrics = evaluate_predictions(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]), ["a", "b"])
    >>> metrics["accuracy"], metrics["confusion_matrix"]
    (1.0, [[1, 0], [0, 1]])
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true, probabilities = _check_inputs(y_true, probabilities, class_names)
    labels = list(range(len(class_names)))
    y_pred = probabilities.argmax(axis=1) if len(y_true) else np.zeros(0, dtype=np.int64)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    present = support > 0
    # Macro F1 over classes that have samples: an absent class has no F1 to average.
    macro_f1 = float(f1[present].mean()) if present.any() else 0.0
    weighted_f1 = float((f1 * support).sum() / support.sum()) if support.sum() else 0.0
    return {
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        "macro_f1": macro_f1,
        "weighted_f1": weighted_f1,
        "samples": int(len(y_true)),
        "per_class": {
            name: {
                "precision": float(precision[index]),
                "recall": float(recall[index]),
                "f1": float(f1[index]),
                "support": int(support[index]),
            }
            for index, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).astype(int).tolist(),
        "class_names": list(class_names),
    }


def worst_mistakes(
    images: Sequence[np.ndarray],
    y_true: np.ndarray,
    probabilities: np.ndarray,
    limit: int = 16,
) -> list[tuple[np.ndarray, int, int, float]]:
    """The wrong predictions made with the highest confidence: (image, true, predicted, prob).

    `images[i]` belongs to row `i`; most confident mistakes first, at most `limit`.
    """
    y_true = np.asarray(y_true).astype(np.int64).reshape(-1)
    probabilities = np.asarray(probabilities)
    if len(images) != len(y_true) or len(y_true) != len(probabilities):
        raise ValueError(
            f"images, y_true and probabilities differ in length: {len(images)}, {len(y_true)}, {len(probabilities)}"
        )
    if not len(y_true):
        return []
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    wrong = np.flatnonzero(predicted != y_true)
    order = wrong[np.argsort(-confidence[wrong], kind="stable")][:limit]
    return [(np.asarray(images[i]), int(y_true[i]), int(predicted[i]), float(confidence[i])) for i in order]


def format_classification_report(metrics: dict) -> str:
    """A fixed-width per-class table (precision, recall, F1, support) with the totals below."""
    names = metrics["class_names"]
    width = max([len(name) for name in names] + [12])
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]
    for name in names:
        row = metrics["per_class"][name]
        lines.append(
            f"{name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1']:5.3f}  {row['support']:7d}"
        )
    lines.append("")
    lines.append(f"{'accuracy':<{width}}  {metrics['accuracy']:.4f}  ({metrics.get('samples', '?')} samples)")
    lines.append(f"{'macro F1':<{width}}  {metrics['macro_f1']:.4f}")
    lines.append(f"{'weighted F1':<{width}}  {metrics['weighted_f1']:.4f}")
    return "\n".join(lines) + "\n"


def format_summary(metrics: dict, max_confusions: int = 5) -> str:
    """One terminal screen: headline numbers, the per-class table and the most common confusions."""
    lines = [
        f"accuracy {metrics['accuracy']:.4f}   macro F1 {metrics['macro_f1']:.4f}   "
        f"weighted F1 {metrics['weighted_f1']:.4f}   ({metrics.get('samples', '?')} images)",
        "",
        format_classification_report(metrics).split("\n\n")[0],
    ]
    matrix = np.asarray(metrics["confusion_matrix"])
    names = metrics["class_names"]
    if matrix.size:
        off_diagonal = matrix.copy()
        np.fill_diagonal(off_diagonal, 0)
        pairs = np.dstack(np.unravel_index(np.argsort(-off_diagonal, axis=None), off_diagonal.shape))[0]
        confusions = [
            f"  {names[true]} -> {names[pred]}: {off_diagonal[true, pred]}"
            for true, pred in pairs[:max_confusions]
            if off_diagonal[true, pred] > 0
        ]
        if confusions:
            lines += ["", "most common confusions (true -> predicted):"] + confusions
    return "\n".join(lines)


def _figure_png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display and in threads
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(metrics: dict) -> bytes:
    """PNG bytes of the confusion matrix, counts in the cells, rows = true class."""
    plt = _pyplot()
    matrix = np.asarray(metrics["confusion_matrix"])
    names = metrics["class_names"]
    size = max(4.0, 0.55 * len(names) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(names)), names, rotation=60, ha="right")
    axis.set_yticks(range(len(names)), names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), value in np.ndenumerate(matrix):
        axis.text(column, row, str(value), ha="center", va="center", fontsize=8,
                  color="white" if value > threshold else "black")
    axis.set_title(f"accuracy {metrics['accuracy']:.3f}, macro F1 {metrics['macro_f1']:.3f}")
    return _figure_png(figure)


def plot_curves(history: dict[str, list[float]]) -> bytes:
    """PNG bytes of accuracy and loss per epoch (train and validation)."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("acc", "loss")):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            values = history.get(key) or history.get(key.replace("acc", "accuracy"))
            if values:
                axis.plot(range(1, len(values) + 1), values, style, label=key)
        if "phase" in history:
            # Mark where fine-tuning starts, so the jump in the curves is explained.
            phases = history["phase"]
            for epoch in range(1, len(phases)):
                if phases[epoch] != phases[epoch - 1]:
                    axis.axvline(epoch + 0.5, color="grey", linestyle=":")
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.legend()
    return _figure_png(figure)


def plot_mistakes(
    mistakes: Sequence[tuple[np.ndarray, int, int, float]], class_names: Sequence[str], columns: int = 4
) -> bytes:
    """PNG bytes of a grid of mistakes titled ``true -> predicted (prob)``."""
    plt = _pyplot()
    rows = max(1, -(-len(mistakes) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.2 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, (image, true, predicted, probability) in zip(axes.ravel(), mistakes):
        axis.imshow(np.asarray(image, dtype=np.uint8))
        axis.set_title(f"{class_names[true]} -> {class_names[predicted]}\n({probability:.2f})", fontsize=9)
    if not mistakes:
        axes[0, 0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    return _figure_png(figure)


def write_reports(
    run_dir: str | os.PathLike,
    metrics: dict,
    history: dict[str, list[float]] | None = None,
    mistakes: Sequence[tuple[np.ndarray, int, int, float]] | None = None,
    prefix: str = "",
) -> dict[str, Path]:
    """Write the report files into `run_dir` atomically; returns {kind: path}.

    Kinds: metrics, report, confusion_matrix, curves (when `history`), mistakes (when
    `mistakes`: tuples of uint8 image, true index, predicted index, predicted probability).
    `prefix` (e.g. ``"eval_"``) keeps reports of another dataset beside the training ones.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics": run_dir / f"{prefix}{METRICS_NAME}",
        "report": run_dir / f"{prefix}{REPORT_NAME}",
        "confusion_matrix": run_dir / f"{prefix}{CONFUSION_NAME}",
    }
    atomic_write_json(paths["metrics"], metrics)
    atomic_write_text(paths["report"], format_classification_report(metrics))
    atomic_write_bytes(paths["confusion_matrix"], plot_confusion_matrix(metrics))
    if history:
        paths["curves"] = run_dir / f"{prefix}{CURVES_NAME}"
        atomic_write_bytes(paths["curves"], plot_curves(history))
    if mistakes is not None:
        paths["mistakes"] = run_dir / f"{prefix}{MISTAKES_NAME}"
        atomic_write_bytes(paths["mistakes"], plot_mistakes(mistakes, metrics["class_names"]))
    return paths


COVERAGE_PLOT_NAME = "coverage.png"
COVERAGE_TABLE_NAME = "coverage.txt"


def plot_coverage(thresholds: np.ndarray, coverage: np.ndarray, accuracy: np.ndarray,
                  chosen_threshold: float | None = None) -> bytes:
    """PNG bytes of accuracy against coverage (answering only above a probability threshold)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 4))
    axis.plot(coverage, accuracy, "-", color="tab:blue")
    if chosen_threshold is not None:
        index = int(np.searchsorted(-np.asarray(thresholds), -chosen_threshold, side="right")) - 1
        index = min(max(index, 0), len(coverage) - 1)
        axis.plot([coverage[index]], [accuracy[index]], "o", color="tab:red",
                  label=f"unknown threshold {chosen_threshold:.3f}: coverage {coverage[index]:.2f}, "
                        f"accuracy {accuracy[index]:.3f}")
        axis.legend(loc="lower left", fontsize=8)
    axis.set_xlabel("coverage (share of photos answered)")
    axis.set_ylabel("accuracy of the answered")
    axis.set_xlim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.set_title("selective prediction on the validation split")
    return _figure_png(figure)


def format_coverage_table(rows: Sequence[dict], chosen_threshold: float | None = None) -> str:
    lines = ["coverage  threshold  accuracy", "--------  ---------  --------"]
    lines += [f"{row['coverage']:>8.3f}  {row['threshold']:>9.4f}  {row['accuracy']:>8.4f}" for row in rows]
    if chosen_threshold is not None:
        lines.append(f"unknown threshold stored in the bundle: {chosen_threshold:.4f}")
    return "\n".join(lines) + "\n"


def write_coverage_report(run_dir: str | os.PathLike, probabilities: np.ndarray, y_true: np.ndarray,
                          chosen_threshold: float | None = None, prefix: str = "") -> tuple[list[dict], dict[str, Path]]:
    """coverage.png and coverage.txt (accuracy when answering only the most confident share); returns the table."""
    from detcrop.classify.calibration import accuracy_coverage_curve, coverage_table

    run_dir = Path(run_dir)
    rows = coverage_table(probabilities, y_true)
    paths = {"coverage_plot": run_dir / f"{prefix}{COVERAGE_PLOT_NAME}",
             "coverage_table": run_dir / f"{prefix}{COVERAGE_TABLE_NAME}"}
    atomic_write_bytes(paths["coverage_plot"],
                       plot_coverage(*accuracy_coverage_curve(probabilities, y_true), chosen_threshold))
    atomic_write_text(paths["coverage_table"], format_coverage_table(rows, chosen_threshold))
    return rows, paths

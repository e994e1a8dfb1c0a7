"""Score a saved bundle on a class-folder dataset and write the reports into the run folder."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from detcrop.data.errors import DetcropError
from detcrop.data.folders import scan_class_folders
from detcrop.data.images import ImageError, load_image_array
from detcrop.data.outputs import check_output_path

logger = logging.getLogger(__name__)

#: Prefix of the files `evaluate` writes, so they sit beside the training reports.
EVAL_PREFIX = "eval_"


class EvaluationError(DetcropError, ValueError):
    """A dataset that cannot be evaluated with a bundle (unknown classes, no readable image)."""


@dataclass
class EvaluationResult:
    metrics: dict  # evaluate_predictions plus dataset, skipped
    report_paths: dict[str, Path]


def evaluate(run_dir: str | os.PathLike, dataset_dir: str | os.PathLike, batch_size: int = 32,
             mistakes: int = 16, progress: bool = True, prefix: str = EVAL_PREFIX) -> EvaluationResult:
    """Predict every image of `dataset_dir` with the bundle in `run_dir`; write ``eval_*`` reports there.

    The dataset's class folders must be classes the bundle knows (a subset is fine);
    unreadable images are skipped and listed in the metrics.
    """
    from detcrop.classify.bundle import load_bundle
    from detcrop.classify.reports import evaluate_predictions, worst_mistakes, write_reports

    # The eval_* reports go into the run folder: inside the dataset they would become images.
    check_output_path(run_dir, "RUN", protected=[("the dataset", dataset_dir)])
    bundle = load_bundle(run_dir)
    dataset = scan_class_folders(dataset_dir)
    unknown = [name for name in dataset.class_names if name not in bundle.class_names]
    if unknown:
        raise EvaluationError(
            f"{dataset_dir}: class folders {unknown} are not classes of the bundle in {run_dir} "
            f"(it knows {', '.join(bundle.class_names)})"
        )
    skipped = [(str(item.path), item.reason) for item in dataset.skipped]
    # Batch by batch, keeping paths only: a folder of phone photos would not fit in memory.
    kept_paths, labels, batches = [], [], []
    pending: list[np.ndarray] = []
    for sample in tqdm(dataset.samples, desc="evaluate", unit="img", disable=not progress):
        try:
            pending.append(load_image_array(sample.path))
        except ImageError as error:
            skipped.append((str(sample.path), error.reason))
            logger.warning("skipping %s: %s", error.path, error.reason)
            continue
        kept_paths.append(sample.path)
        labels.append(bundle.class_names.index(sample.label))
        if len(pending) == batch_size:
            batches.append(bundle.predict(pending, batch_size=batch_size))
            pending = []
    if pending:
        batches.append(bundle.predict(pending, batch_size=batch_size))
    if not kept_paths:
        raise EvaluationError(f"{dataset_dir}: no readable images to evaluate")
    probabilities = np.concatenate(batches)
    y_true = np.asarray(labels, dtype=np.int64)
    metrics = evaluate_predictions(y_true, probabilities, bundle.class_names)
    metrics |= {"dataset": str(dataset_dir), "run": str(run_dir),
                "skipped": [{"path": path, "reason": reason} for path, reason in skipped]}
    worst = [(load_image_array(kept_paths[int(index)]), true, predicted, probability)
             for index, true, predicted, probability
             in worst_mistakes(list(range(len(kept_paths))), y_true, probabilities, mistakes)]
    paths = write_reports(run_dir, metrics, None, worst, prefix)
    return EvaluationResult(metrics, paths)

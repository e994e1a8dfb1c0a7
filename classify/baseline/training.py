"""Training the baseline: `train_baseline` fits a recipe's CNN on arrays; `run_baseline` writes a whole run.

`train_baseline` reads top to bottom: tf.data pipelines from uint8 arrays, build the core model,
compile, fit while an `EpochClock` records when each epoch ended and its test accuracy.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from detcrop.classify.baseline.model import build_model, build_serving_model
from detcrop.classify.baseline.recipes import RECIPES, BaselineConfig, Recipe
from detcrop.data.seeding import python_random_seeded

if TYPE_CHECKING:  # TensorFlow loads only when a model is built
    import keras

    from detcrop.classify.baseline.data import ArrayDataset

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- training


@dataclass
class EpochRecord:
    """When one epoch ended and how good the model was then."""

    epoch: int  # 1-based
    train_seconds: float  # cumulative time spent training, test evaluations excluded
    wall_seconds: float  # cumulative time since fit started, evaluations included
    test_accuracy: float | None  # accuracy on the test set after this epoch
    train_accuracy: float | None
    learning_rate: float | None  # at the end of the epoch


def _make_epoch_clock():
    import keras

    class EpochClock(keras.callbacks.Callback):
        """Records the end time of each epoch, not counting the test evaluation in train time."""

        def __init__(self) -> None:
            super().__init__()
            self.records: list[EpochRecord] = []
            self._evaluating = 0.0
            self._test_started = 0.0

        def on_train_begin(self, logs=None):
            self._start = time.perf_counter()

        def on_test_begin(self, logs=None):
            self._test_started = time.perf_counter()

        def on_test_end(self, logs=None):
            self._evaluating += time.perf_counter() - self._test_started

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            wall = time.perf_counter() - self._start
            optimizer = self.model.optimizer
            rate = optimizer.learning_rate
            learning_rate = float(rate(optimizer.iterations) if callable(rate) else rate)
            self.records.append(EpochRecord(
                epoch=epoch + 1, train_seconds=wall - self._evaluating, wall_seconds=wall,
                test_accuracy=float(logs["val_accuracy"]) if "val_accuracy" in logs else None,
                train_accuracy=float(logs["accuracy"]) if "accuracy" in logs else None,
                learning_rate=learning_rate,
            ))

    return EpochClock()


@dataclass
class TrainResult:
    """What `train_baseline` gives back."""

    model: Any  # the trained core keras.Model (float 0..255 input at the dataset's shape)
    config: BaselineConfig  # resolved (recipe values filled in)
    history: dict[str, list[float]]  # Keras history: accuracy, loss, val_accuracy, val_loss (val = test set)
    epochs: list[EpochRecord] = field(default_factory=list)
    train_seconds: float = 0.0  # total, test evaluations excluded
    samples_per_second: float = 0.0  # training images per second of train time


def _dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle_seed: int | None):
    import tensorflow as tf

    from detcrop.classify.fitting import steady_stream

    data = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle_seed is not None:
        data = data.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    data = data.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y))
    # Autotuning off: with it on, epochs stalled with the cores idle (RESULTS.md#autotune-stall).
    return steady_stream(data.prefetch(2))


def _optimizer(recipe: Recipe, learning_rate: float, steps_per_epoch: int, epochs: int):
    import keras

    if recipe.schedule == "warmup-cosine":
        total = steps_per_epoch * epochs
        warmup = min(int(recipe.warmup_epochs * steps_per_epoch), total - 1)
        rate: Any = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=learning_rate / 10, decay_steps=max(1, total - warmup),
            warmup_target=learning_rate, warmup_steps=warmup,
        ) if warmup > 0 else keras.optimizers.schedules.CosineDecay(learning_rate, max(1, total))
    else:
        rate = learning_rate
    if recipe.weight_decay:
        return keras.optimizers.AdamW(learning_rate=rate, weight_decay=recipe.weight_decay)
    return keras.optimizers.Adam(learning_rate=rate)


def train_baseline(
    data: "ArrayDataset", config: BaselineConfig, progress: bool = True, evaluate_each_epoch: bool = True
) -> TrainResult:
    """Train the recipe's model on `data.x_train` from scratch; the test set is only monitored.

    No choice is made on the test set (no early stopping, no best-epoch pick): the returned
    model is the one after the last epoch.
    """
    config = config.resolved()
    recipe = RECIPES[config.recipe]
    with python_random_seeded(config.seed):  # unseeded Keras layers draw their seeds from it
        model = build_model(config.recipe, data.image_shape, len(data.class_names))
    steps_per_epoch = -(-len(data.x_train) // config.batch_size)
    model.compile(
        optimizer=_optimizer(recipe, config.learning_rate, steps_per_epoch, config.epochs),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    train = _dataset(data.x_train, data.y_train, config.batch_size, shuffle_seed=config.seed)
    test = _dataset(data.x_test, data.y_test, max(config.batch_size, 256), shuffle_seed=None)
    clock = _make_epoch_clock()
    logger.info(
        "training %s on %s: %d train / %d test images of %s, %d epochs, batch %d, lr %g",
        config.recipe, data.name, len(data.x_train), len(data.x_test), data.image_shape,
        config.epochs, config.batch_size, config.learning_rate,
    )
    history = model.fit(
        train, epochs=config.epochs, validation_data=test if evaluate_each_epoch else None,
        callbacks=[clock], verbose=1 if progress else 0, shuffle=False,  # tf.data shuffles
    )
    train_seconds = clock.records[-1].train_seconds if clock.records else 0.0
    return TrainResult(
        model=model, config=config,
        history={key: [float(value) for value in values] for key, values in history.history.items()},
        epochs=clock.records, train_seconds=train_seconds,
        samples_per_second=len(data.x_train) * config.epochs / train_seconds if train_seconds else 0.0,
    )


def predict_arrays(model: "keras.Model", images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Probabilities of the core `model` for uint8 images at its input shape."""
    return np.asarray(model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0))


def time_to_accuracy(records: list[EpochRecord], target: float) -> EpochRecord | None:
    """The first epoch whose test accuracy reached `target`, or None."""
    for record in records:
        if record.test_accuracy is not None and record.test_accuracy >= target:
            return record
    return None


def model_summary(model: "keras.Model") -> str:
    """The Keras summary as text (layer table with the parameter counts)."""
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line), line_length=90)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- a whole run

#: Files `run_baseline` writes besides the reports and the bundle.
CONFIG_NAME = "config.json"
TRAINING_LOG_NAME = "training_log.json"
SUMMARY_NAME = "model_summary.txt"


def _as_rgb(images: np.ndarray) -> np.ndarray:
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def run_baseline(
    config: BaselineConfig, run_dir: str | os.PathLike, data: "ArrayDataset | None" = None, progress: bool = True
) -> dict:
    """Load the data, train, evaluate on the test set, write reports and the bundle into `run_dir`.

    Returns a JSON-ready summary: run_dir, metrics, the per-epoch timing log, train seconds,
    samples/s, skipped files and the paths written. `data` skips loading (tests, benchmarks).

    Files: config.json (resolved), model.keras + bundle.json (`classify.bundle`), metrics.json,
    classification_report.txt, confusion_matrix.png, curves.png, mistakes.png
    (`classify.reports`), training_log.json, model_summary.txt.
    """
    from detcrop.classify.baseline.data import load_dataset
    from detcrop.classify.bundle import save_bundle
    from detcrop.classify.reports import evaluate_predictions, worst_mistakes, write_reports
    from detcrop.data.atomic import atomic_write_json, atomic_write_text
    from detcrop.data.config import config_to_dict

    run_dir = Path(run_dir)
    config = config.resolved()
    if data is None:
        data = load_dataset(
            config.dataset, config.data_dir, image_size=config.input_size, test_ratio=config.test_ratio,
            seed=config.seed, allow_download=config.allow_download, progress=progress,
        )
    data = data.subsample(config.limit, config.seed)
    config_dict = config_to_dict(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / CONFIG_NAME, config_dict)

    result = train_baseline(data, config, progress=progress)
    probabilities = predict_arrays(result.model, data.x_test)
    metrics = evaluate_predictions(data.y_test, probabilities, data.class_names)
    mistakes = worst_mistakes(_as_rgb(data.x_test), data.y_test, probabilities)
    paths = write_reports(run_dir, metrics, history=result.history, mistakes=mistakes)

    height, _, channels = data.image_shape
    serving = build_serving_model(result.model, data.image_shape)
    training_log = {
        "dataset": data.name,
        "source": data.source,
        "image_shape": list(data.image_shape),
        "train_images": int(len(data.x_train)),
        "test_images": int(len(data.x_test)),
        "recipe": config.recipe,
        "recipe_description": RECIPES[config.recipe].description,
        "params": int(result.model.count_params()),
        "train_seconds": result.train_seconds,
        "samples_per_second": result.samples_per_second,
        "epochs": [dataclasses.asdict(record) for record in result.epochs],
        "skipped": list(data.skipped),
    }
    save_bundle(run_dir, serving, {
        "class_names": list(data.class_names),
        "input_size": height,
        "backbone": result.model.name,
        "weights_source": f"trained from scratch (recipe {config.recipe}, seed {config.seed})",
        "metrics": {key: metrics[key] for key in ("accuracy", "macro_f1", "weighted_f1", "samples")},
        "config": config_dict,
        "dataset": data.name,
        # How a photo reaches a grayscale model: RGB in, luma inside the graph.
        "color": "grayscale: RGB input converted to luma (0.299 R + 0.587 G + 0.114 B) in the graph"
        if channels == 1 else "rgb",
    })
    atomic_write_json(run_dir / TRAINING_LOG_NAME, training_log)
    atomic_write_text(run_dir / SUMMARY_NAME, model_summary(result.model))
    paths.update({
        "config": run_dir / CONFIG_NAME, "training_log": run_dir / TRAINING_LOG_NAME,
        "summary": run_dir / SUMMARY_NAME, "bundle": run_dir,
    })
    return {
        "run_dir": str(run_dir),
        "metrics": metrics,
        "training": training_log,
        "paths": {key: str(path) for key, path in paths.items()},
    }

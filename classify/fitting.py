"""The Keras plumbing every training strategy shares: batch streams, class weights and callbacks.

`training.py` and each module of `classify.strategies` import from here; nothing here imports
them. Callbacks follow Keras' own interface (`on_epoch_end(epoch, logs)`), so a caller's
callbacks (the web page, a scheduler) see every phase the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from detcrop.data.atomic import atomic_write_json
from detcrop.data.errors import DetcropError

logger = logging.getLogger(__name__)

LOGS_DIR = "logs"  # TensorBoard event files in the run folder, one subfolder per phase


class TrainingError(DetcropError, ValueError):
    """A dataset that training cannot start with (too few classes, no validation images)."""


class TrainingCancelled(DetcropError):
    """A callback stopped training (``self.model.stop_training = True``); no bundle was written.

    `phase` is ``"head"``, ``"partial"``, ``"refit"`` or ``"fine-tune"``; `epoch` the 0-based epoch of that phase that ran
    last. The run folder stays marked incomplete (see `training.save_run_bundle`).
    """

    def __init__(self, run_dir: Path, phase: str, epoch: int):
        super().__init__(f"{run_dir}: training cancelled by a callback in the {phase} phase after epoch "
                         f"{epoch + 1}; no bundle was written")
        self.run_dir, self.phase, self.epoch = run_dir, phase, epoch


# --------------------------------------------------------------------------- batches


def class_weights(labels: np.ndarray, classes: int) -> dict[int, float]:
    """Inverse-frequency loss weight of each class id (0 for a class with no examples)."""
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (classes * np.maximum(counts, 1)), 0.0)
    return {index: float(weight) for index, weight in enumerate(weights)}


def steady_stream(data):
    """`data` with tf.data's autotuning off: every stream `fit` reads here goes through it.

    With autotuning on, ending a fit and starting an epoch often waited with both cores idle
    (RESULTS.md#autotune-stall). These streams set their own map and prefetch sizes.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return data.with_options(options)


def epoch_batches(inputs: np.ndarray, targets: np.ndarray, batch_size: int, seed: int, epochs: int,
                  initial_epoch: int = 0, transform: Callable | None = None):
    """(a tf.data stream of `epochs - initial_epoch` epochs, steps per epoch); epoch e is shuffled by ``rng([seed, e])``.

    Each epoch's order depends on its number only, so epoch 3 of a resumed run sees exactly
    the batches it would have seen without the interruption (fit with ``steps_per_epoch``
    keeps reading one stream across epochs).
    """
    import tensorflow as tf

    orders = np.stack([np.random.default_rng([seed, epoch]).permutation(len(targets))
                       for epoch in range(initial_epoch, max(epochs, initial_epoch + 1))])
    inputs_t, targets_t = tf.constant(inputs), tf.constant(targets)
    stream = (tf.data.Dataset.from_tensor_slices(orders)
              .flat_map(lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size))
              .map(lambda rows: (tf.gather(inputs_t, rows), tf.gather(targets_t, rows))))
    if transform is not None:
        stream = stream.map(transform)
    return steady_stream(stream.prefetch(2)), -(-len(targets) // batch_size)


def in_order_batches(inputs: np.ndarray, targets: np.ndarray, batch_size: int, transform: Callable | None = None):
    """`inputs` and `targets` in batches, in order (validation data)."""
    import tensorflow as tf

    stream = tf.data.Dataset.from_tensor_slices((inputs, targets)).batch(batch_size)
    return steady_stream(stream.map(transform) if transform is not None else stream)


def compile_classifier(model, learning_rate, label_smoothing: float = 0.0) -> None:
    """Adam, categorical cross-entropy (with label smoothing) and accuracy, as every phase trains."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )


# --------------------------------------------------------------------------- callbacks


class EpochLog:
    """Collects history rows, one per epoch of every phase (head, partial, refit, fine-tune).

    With a `path`, the history is written there after each epoch. A phase without validation
    (refit) records None for the val figures. Each row is also a debug log line (`-v`).
    """

    def __init__(self, history: dict[str, list], path: Path | None, phase: str):
        self.history, self.path, self.phase = history, path, phase

    def callback(self):
        import keras

        log = self

        class Recorder(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logs = dict(logs or {})
                row = {
                    "loss": logs.get("loss"), "accuracy": logs.get("accuracy"),
                    "val_loss": logs.get("val_loss"), "val_accuracy": logs.get("val_accuracy"),
                    "lr": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
                    "phase": log.phase,
                }
                for key, value in row.items():
                    log.history.setdefault(key, []).append(value if isinstance(value, str) or value is None else float(value))
                logger.debug("%s epoch %d: %s", log.phase, epoch + 1, " ".join(
                    f"{key} {value:.2e}" if key == "lr" else f"{key} {value:.4f}"
                    for key, value in row.items() if isinstance(value, float)))
                if log.path is not None:
                    atomic_write_json(log.path, log.history)

        return Recorder()


def progress_bar(phase: str, epochs: int, enabled: bool):
    """One progress bar for a phase's epochs with its live figures on it (tqdm's Keras callback)."""
    import keras

    if not enabled:
        return keras.callbacks.Callback()
    from tqdm.keras import TqdmCallback

    class PhaseBar(TqdmCallback):
        def on_train_end(self, *args, **kwargs):
            self.epoch_bar.total = self.epoch_bar.n  # an early stop ends the bar full, at the epochs that ran
            self.epoch_bar.refresh()
            super().on_train_end(*args, **kwargs)

    return PhaseBar(epochs=epochs, verbose=0, desc=phase, leave=True, dynamic_ncols=True)


class CancelWatch:
    """Tells a cancel by a caller's callback from detcrop's own early stop.

    It runs right after the caller's callbacks and before EarlyStopping, so a `stop_training`
    it sees set was set by the caller.
    """

    def __init__(self, phase: str):
        self.phase, self.cancelled_after = phase, None

    def callback(self):
        import keras

        watch = self

        class Watch(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if self.model.stop_training and watch.cancelled_after is None:
                    watch.cancelled_after = -1  # mid-epoch; on_epoch_end of this epoch still comes

            def on_epoch_end(self, epoch, logs=None):
                if self.model.stop_training:
                    watch.cancelled_after = epoch

        return Watch()

    @property
    def cancelled(self) -> bool:
        return self.cancelled_after is not None

    def raise_if_cancelled(self, run_dir: Path) -> None:
        if self.cancelled:
            raise TrainingCancelled(run_dir, self.phase, self.cancelled_after)


class BestWeights:
    """Keeps the weights of the epoch with the best val_accuracy; ties go to the lower val_loss.

    A plain `ModelCheckpoint(monitor="val_accuracy")` keeps the first epoch that reaches the top
    accuracy, which on small or easy data is an early, under-confident head (probabilities
    near 1/classes); the tie-break picks the best-calibrated of the equally accurate epochs.
    """

    def __init__(self):
        self.key = (-np.inf, -np.inf)
        self.weights = None
        self.epoch = -1

    def callback(self):
        import keras

        keeper = self

        class Keep(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                key = (float(logs.get("val_accuracy", -np.inf)), -float(logs.get("val_loss", np.inf)))
                if keeper.weights is None or key > keeper.key:
                    keeper.key, keeper.weights, keeper.epoch = key, self.model.get_weights(), epoch

        return Keep()


def tensorboard_callback(run_dir: Path, phase: str):
    """TensorBoard event files in RUN/logs/<phase> (`tensorboard --logdir RUN/logs`; "member1 head" -> member1-head).

    A do-nothing callback when the `tensorboard` package (a dependency) is missing: logs are
    a convenience, never a reason to fail a training run.
    """
    import importlib.util

    import keras

    if importlib.util.find_spec("tensorboard") is None:
        logger.warning("tensorboard is not installed; no logs in %s", Path(run_dir) / LOGS_DIR)
        return keras.callbacks.Callback()
    return keras.callbacks.TensorBoard(log_dir=str(Path(run_dir) / LOGS_DIR / phase.replace(" ", "-")), write_graph=False)


def phase_callbacks(phase: str, epochs: int, run_dir: Path, history: dict[str, list], callbacks=(),
                    progress: bool = False, before_log=(), after_log=()) -> tuple[CancelWatch, list]:
    """(the cancel watch, every callback of a phase in order).

    The order: the caller's `callbacks`, the watch (so it sees their `stop_training` before
    detcrop's own early stop), `before_log` (early stopping, schedules, best weights), the
    history row, `after_log` (what needs the row written, e.g. a backup), TensorBoard, the bar.
    `phase` names the history rows and the logs folder ("member1 partial"); the watch's own
    phase name drops the member tag (`TrainingCancelled.phase`).
    """
    from detcrop.data.layout import HISTORY_NAME

    watch = CancelWatch(phase.split(" ")[-1])
    return watch, [*callbacks, watch.callback(), *before_log, EpochLog(history, run_dir / HISTORY_NAME, phase).callback(),
                   *after_log, tensorboard_callback(run_dir, phase), progress_bar(phase, epochs, progress)]

"""``fine_tune: full``: the top layers of the base trained on images, at a low learning rate.

The path for a GPU: every epoch runs the whole base forward and backward on every image, with
augmentation layers (flip, rotation, zoom, contrast) in front of it. BatchNorm stays frozen,
so in inference mode. The state is saved after every epoch in ``RUN/backup`` (`FineTuneBackup`),
so a killed run, rerun, continues exactly where it stopped. Keras' own `BackupAndRestore` keeps
the weights and the optimizer but not the best epoch's weights, the learning-rate schedule's
counters, the history rows, nor a check that the backup belongs to this config and split, so
that guarantee needs this one.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from detcrop.classify.config import TrainConfig
from detcrop.classify.examples import Examples
from detcrop.classify.fitting import class_weights, compile_classifier, epoch_batches, in_order_batches, phase_callbacks
from detcrop.classify.model import FeatureExtractor, compose_model, head_val_accuracy
from detcrop.classify.strategies import MemberJob, Outcome
from detcrop.data.atomic import atomic_write_bytes, atomic_write_json
from detcrop.data.config import config_to_dict
from detcrop.data.images import ImageError, load_image_array
from detcrop.data.layout import BACKUP_DIR

logger = logging.getLogger(__name__)

#: Inside BACKUP_DIR: the commit point of the fine-tuning state (names the arrays files).
BACKUP_STATE_NAME = "state.json"


def run(job: MemberJob) -> Outcome:
    """Full fine-tuning of one member from its trained head; val measured on the images themselves."""
    from detcrop.classify.bundle import predict_images

    tick = time.perf_counter()
    examples, features = job.examples, job.features
    # The val originals are loaded once: fine-tuning validates on them, the reports show them.
    val_images, kept, skipped = load_images([examples.paths[row] for row in examples.val])
    if skipped:  # changed since their features were computed
        gone = set(examples.val.tolist()) - set(examples.val[kept].tolist())
        rows = [row for row in range(len(examples.paths)) if row not in gone]
        examples, features = examples.keep(rows), {key: value[rows] for key, value in features.items()}
    model, unreadable = fine_tune(job.config, job.extractor, job.head, examples, val_images,
                                  head_val_accuracy(job.head, examples, features), job.classes, job.run_dir,
                                  job.history, job.callbacks, job.progress, job.tag)
    probabilities = predict_images(model, val_images, job.config.input_size, job.config.tta_flip)
    return Outcome(model, probabilities, examples, val_images, skipped + unreadable,
                   timings={"fine_tune": time.perf_counter() - tick})


def load_images(paths: Sequence[Path], progress: bool = False) -> tuple[list[np.ndarray], list[int], list[tuple[str, str]]]:
    """(uint8 HxWx3 images that load, their positions in `paths`, skipped (path, reason))."""
    from tqdm import tqdm

    images, kept, skipped = [], [], []
    for position, path in enumerate(tqdm(paths, desc="images", unit="img", disable=not progress)):
        try:
            images.append(load_image_array(path))
        except ImageError as error:
            skipped.append((str(path), error.reason))
            continue
        kept.append(position)
    return images, kept, skipped


def resized_uint8(images: Sequence[np.ndarray], input_size: int) -> np.ndarray:
    """Images at the input size, rounded to uint8 to keep the fine-tuning arrays small."""
    from detcrop.classify.bundle import resize_images, resize_layer

    layer = resize_layer(input_size)
    batch = np.zeros((len(images), input_size, input_size, 3), dtype=np.uint8)
    for index, image in enumerate(images):
        batch[index] = np.clip(np.round(resize_images([image], input_size, layer)[0]), 0, 255)
    return batch


class FineTuneBackup:
    """Everything a killed fine-tuning needs to go on as if it had never stopped.

    After every epoch: the model's variables (weights, BatchNorm statistics, the augmentation
    layers' seed states) and the optimizer's (step, learning rate, moments) go to
    ``epoch-N.npz``, the best weights so far to ``best-N.npz``, and ``state.json`` (written
    last: the commit point) names them and holds the history rows, the best val accuracy and
    the LR schedule's counters. A backup of another config or another split is discarded.
    """

    def __init__(self, folder: Path, identity: dict):
        self.folder, self.identity = folder, identity

    def load(self) -> dict | None:
        path = self.folder / BACKUP_STATE_NAME
        if not path.is_file():
            return None
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            logger.warning("%s: unreadable fine-tuning backup (%s); starting phase 2 afresh", path, error)
            return None
        if state.get("identity") != self.identity:
            logger.warning("%s: fine-tuning backup of other settings or another split; starting phase 2 afresh",
                           self.folder)
            return None
        return state

    @staticmethod
    def _arrays(path: Path) -> list[np.ndarray]:
        with np.load(path, allow_pickle=False) as stored:
            return [stored[f"v{index}"] for index in range(len(stored.files))]

    def restore(self, state: dict, model, best: "FineTuneBest") -> None:
        """Model and optimizer variables and the best weights of the saved epoch."""
        variables = self._arrays(self.folder / state["variables"])
        model.optimizer.build(model.trainable_variables)
        targets = list(model.variables) + list(model.optimizer.variables)
        if len(variables) != len(targets):
            raise ValueError(f"backup holds {len(variables)} arrays, the model {len(targets)}")
        for variable, value in zip(targets, variables):
            variable.assign(value)
        best.value, best.epoch = state["best_value"], state["best_epoch"]
        best.weights = self._arrays(self.folder / state["best_weights"]) if state["best_weights"] else None

    def save(self, epoch: int, model, best: "FineTuneBest", rows: dict, schedule: dict) -> None:
        import io

        self.folder.mkdir(parents=True, exist_ok=True)

        def write(name: str, arrays: list) -> str:
            buffer = io.BytesIO()
            np.savez(buffer, **{f"v{index}": np.asarray(array) for index, array in enumerate(arrays)})
            atomic_write_bytes(self.folder / name, buffer.getvalue())
            return name

        variables = write(f"epoch-{epoch}.npz", [variable.numpy() for variable in
                                                  list(model.variables) + list(model.optimizer.variables)])
        best_name = None
        if best.weights is not None:
            best_name = f"best-{best.epoch}.npz"
            if not (self.folder / best_name).exists():
                write(best_name, best.weights)
        atomic_write_json(self.folder / BACKUP_STATE_NAME, {
            "identity": self.identity, "epoch": epoch, "variables": variables, "best_weights": best_name,
            "best_value": best.value, "best_epoch": best.epoch, "history": rows, "schedule": schedule,
        })
        for stale in self.folder.glob("*.npz"):
            if stale.name not in (variables, best_name):
                stale.unlink(missing_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class FineTuneBest:
    """The best fine-tuned weights; they must beat phase 1's val accuracy to count."""

    value: float
    epoch: int = -1
    weights: list | None = field(default=None, repr=False)


def unfrozen_model(config: TrainConfig, extractor: FeatureExtractor, head):
    """The classifier with augmentation in front and the top `fine_tune_layers` weighted base layers trainable, compiled."""
    import keras

    base = extractor.base
    base.trainable = True
    layers = [layer for layer in base.layers if layer.weights]
    frozen_count = max(0, len(layers) - config.fine_tune_layers) if config.fine_tune_layers else 0
    for position, layer in enumerate(layers):
        # BatchNorm stays frozen: its statistics were learnt on far more images than these.
        layer.trainable = position >= frozen_count and not isinstance(layer, keras.layers.BatchNormalization)
    logger.info("fine-tuning %d of %d weighted base layers (BatchNorm frozen)",
                sum(layer.trainable for layer in layers), len(layers))
    augmentation = [
        keras.layers.RandomFlip("horizontal", seed=config.seed, name="aug_flip"),
        keras.layers.RandomRotation(0.04, seed=config.seed, name="aug_rotation"),
        keras.layers.RandomZoom(0.1, seed=config.seed, name="aug_zoom"),
        keras.layers.RandomContrast(0.15, seed=config.seed, name="aug_contrast"),
    ]
    model = compose_model(config.input_size, extractor.preprocessing, base, head, augmentation)
    compile_classifier(model, config.fine_tune_learning_rate, config.label_smoothing)
    return model


def checkpoint_callback(model, backup: FineTuneBackup, best: FineTuneBest, state: dict | None, reduce_lr,
                        history: dict[str, list], rows: dict[str, list]):
    """Keeps the best weights and saves the backup after each epoch; runs after the history row is written.

    `rows` are this phase's history rows (restored ones first); `state` the backup resumed from, if any.
    """
    import keras

    first_row = len(history.get("phase", [])) - len(rows.get("phase", []))  # history rows from here on are this phase's

    class Checkpoint(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            if state is not None:  # ReduceLROnPlateau resets itself in on_train_begin; put back its counters
                reduce_lr.wait, reduce_lr.cooldown_counter = state["schedule"]["wait"], state["schedule"]["cooldown"]
                reduce_lr.best = state["schedule"]["best"]

        def on_epoch_end(self, epoch, logs=None):
            accuracy = float((logs or {}).get("val_accuracy", -np.inf))
            if accuracy > best.value:
                best.value, best.epoch, best.weights = accuracy, epoch, model.get_weights()
            rows.update({key: values[first_row:] for key, values in history.items()})
            backup.save(epoch, model, best, rows, {"wait": int(reduce_lr.wait), "best": float(reduce_lr.best),
                                                   "cooldown": int(reduce_lr.cooldown_counter)})

    return Checkpoint()


def fine_tune(config: TrainConfig, extractor: FeatureExtractor, head, examples: Examples,
              val_images: Sequence[np.ndarray], phase1_accuracy: float, classes: int, run_dir: Path,
              history: dict[str, list], callbacks: Sequence = (), progress: bool = False, tag: str = "",
              ) -> tuple[Any, list[tuple[str, str]]]:
    """Unfreeze the top of the base and train everything at a low learning rate; resumes a killed run.

    `val_images` are the originals of ``examples.val`` (loaded once by the caller). Returns
    (the composed model with the best weights, skipped train images). The fine-tuned weights
    replace phase 1's only if their val accuracy beats `phase1_accuracy`.
    """
    import keras
    import tensorflow as tf

    train_images, kept, skipped = load_images([examples.paths[row] for row in examples.train], progress)
    train_y = examples.labels[examples.train][kept]
    one_hot = lambda labels: keras.utils.to_categorical(labels, classes).astype(np.float32)  # noqa: E731
    to_float = lambda x, y: (tf.cast(x, tf.float32), y)  # noqa: E731
    val_data = in_order_batches(resized_uint8(val_images, config.input_size), one_hot(examples.labels[examples.val]),
                                config.batch_size, to_float)
    model = unfrozen_model(config, extractor, head)
    phase1_weights = model.get_weights()

    backup = FineTuneBackup(run_dir / BACKUP_DIR, {"config": config_to_dict(config), "examples": examples.identity()})
    best = FineTuneBest(value=phase1_accuracy)
    reduce_lr = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2)
    state, rows, initial_epoch = backup.load(), {}, 0
    if state is not None:
        backup.restore(state, model, best)
        rows, initial_epoch = state["history"], state["epoch"] + 1
        logger.info("resuming fine-tuning after epoch %d from %s", initial_epoch, backup.folder)
    for key, values in rows.items():
        history.setdefault(key, []).extend(values)
    watch, phase = phase_callbacks(tag + "fine-tune", config.fine_tune_epochs, run_dir, history, callbacks, progress,
                                   before_log=[reduce_lr],
                                   after_log=[checkpoint_callback(model, backup, best, state, reduce_lr, history, rows)])
    train_data, steps = epoch_batches(resized_uint8(train_images, config.input_size), one_hot(train_y),
                                      config.batch_size, config.seed, config.fine_tune_epochs, initial_epoch, to_float)
    model.fit(train_data, steps_per_epoch=steps, validation_data=val_data, epochs=config.fine_tune_epochs,
              initial_epoch=initial_epoch, verbose=0, shuffle=False,  # epoch_batches shuffles
              class_weight=class_weights(train_y, classes) if config.class_weights else None, callbacks=phase)
    if watch.cancelled:
        backup.remove()  # a cancel is not an interruption: the next run starts afresh
        watch.raise_if_cancelled(run_dir)
    if best.weights is not None:
        model.set_weights(best.weights)
    else:
        logger.warning("fine-tuning never beat phase 1's val accuracy %.4f; keeping the phase-1 weights",
                       phase1_accuracy)
        model.set_weights(phase1_weights)
    backup.remove()
    return compose_model(config.input_size, extractor.preprocessing, extractor.base, head), skipped

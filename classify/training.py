"""Transfer learning on a class-folder dataset, top to bottom (keras-io guides/transfer_learning.py).

`train` is its steps in order, each a named function over ONE index space (`Examples`: row i
of every array is image i):

1. `split_examples`: scan the folders, hash every file and split train/val (grouped by
   content and by source photo when the dataset has a crop manifest, stratified by class).
2. `compute_features`: features of the frozen base are computed once per image (and its
   mirror) and cached; images without features leave the index space here, and only here.
   With partial fine-tuning (the default) the cached pass stops at the cut and the features
   are pooled from the cached maps by the blocks above it (`classify.partial_finetune`).
3. `fit_head`: the head (dropout + dense softmax on the pooled features) trains on them with
   early stopping, LR reduction on plateau, the best epoch by val accuracy and class weights.
4. `_partial_fine_tune` (default, ``train_from``): the blocks above the cut and the head train
   on the cached maps. Or `fine_tune` (``fine_tune_layers > 0``): the top layers of the base are unfrozen
   (BatchNorm stays frozen and in inference mode), images pass through augmentation layers,
   and the whole model trains at a low learning rate. Its state is saved after every epoch in
   ``RUN/backup``, so a killed run, rerun, continues exactly where it stopped.
5. `predict_val`, `write_run_reports`: the composed model (pixels 0..255 of any size in,
   probabilities out) on the val split; metrics, plots, mistakes.
6. `save_run_bundle`: model.keras + bundle.json. Until it is in place, ``RUN/INCOMPLETE``
   marks the run, and predict, evaluate and export refuse it.

Randomness comes from `TrainConfig.seed` through local generators and seeded layers; nothing
here seeds Python's, NumPy's or TensorFlow's global generators.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from detcrop.data.atomic import atomic_write_bytes, atomic_write_json
from detcrop.data.config import ConfigError, build_config, config_to_dict
from detcrop.data.errors import DetcropError
from detcrop.data.folders import scan_class_folders
from detcrop.data.images import ImageError, file_sha256, load_image_array
from detcrop.data.layout import BACKUP_DIR, CONFIG_NAME, HISTORY_NAME, SPLIT_NAME
from detcrop.data.locks import folder_lock
from detcrop.data.outputs import check_output_path
from detcrop.data.ray_runtime import RaySettings
from detcrop.data.runtime import RUNTIMES, resolve_runtime
from detcrop.data.splits import source_hashes_from_manifest, split_class_folders
from detcrop.data.validate import require_readable_images

logger = logging.getLogger(__name__)

LOGS_DIR = "logs"  # TensorBoard event files in the run folder, one subfolder per phase
#: Inside BACKUP_DIR: the commit point of the fine-tuning state (names the arrays files).
BACKUP_STATE_NAME = "state.json"


class TrainingError(DetcropError, ValueError):
    """A dataset that training cannot start with (too few classes, no validation images)."""


class TrainingCancelled(DetcropError):
    """A callback stopped training (``self.model.stop_training = True``); no bundle was written.

    `phase` is ``"head"``, ``"partial"``, ``"refit"`` or ``"fine-tune"``; `epoch` the 0-based epoch of that phase that ran
    last. The run folder stays marked incomplete (see `save_run_bundle`).
    """

    def __init__(self, run_dir: Path, phase: str, epoch: int):
        super().__init__(f"{run_dir}: training cancelled by a callback in the {phase} phase after epoch "
                         f"{epoch + 1}; no bundle was written")
        self.run_dir, self.phase, self.epoch = run_dir, phase, epoch


@dataclass(frozen=True)
class TrainConfig:
    """Defaults of `detcrop train`; every field is a CLI flag or a key of a --config JSON."""

    backbone: str = "efficientnet-lite0"  # registry name: efficientnet-lite0, efficientnet-lite1, efficientnet-lite2, densenet121, mobilenetv2, scratch
    weights: str = ""  # "" = the backbone's default (package / imagenet / none), or a local weights file
    input_size: int = 224  # side of the square the backbone sees (resized in the graph); with partial fine-tuning 224 fits 15 min for 3,000 photos on 2 cores (a frozen head gained ~0.04 F1 from 320: preset fast)
    epochs: int = 60  # most head epochs on cached features (early stopping usually ends sooner)
    partial_head_epochs: int = 20  # most head epochs when partial fine-tuning follows (the head is only its start: its val accuracy rose by 0.006-0.02 after epoch 20 on watches-brands; saves about 50 s of 3,000 photos' 15 minutes)
    batch_size: int = 32  # images per step in both phases
    learning_rate: float = 1e-3  # Adam learning rate of the head
    val_ratio: float = 0.2  # share of each class held out for validation and the reports
    seed: int = 0  # split, initialisation and shuffling seed
    hidden_units: int = 512  # width of the head's hidden ReLU layer (0 = a linear head on the features)
    dropout: float = 0.5  # dropout before each dense layer of the head
    patience: int = 8  # epochs without val_loss improvement before stopping (LR halves after patience/2)
    flip_features: bool = True  # also cache mirrored images' features and train the head on both
    tta_flip: bool = True  # at prediction, average the image's and its mirror's probabilities
    class_weights: bool = True  # weight the loss by inverse class frequency (imbalanced data)
    label_smoothing: float = 0.1  # softens one-hot targets; helps calibration on small data
    train_from: str = "auto"  # partial fine-tuning: train the base from this block up (e.g. block6a) on activations cached at that cut; "auto" = the backbone's measured cut (block6b for EfficientNet-Lite0 and Lite1, block6c for Lite2; none for others or with fine_tune_layers), "" = off; classify.partial_finetune
    partial_epochs: int = 12  # epochs of partial fine-tuning (cosine schedule over all of them); 12 beat 8 by 0.016 val F1 on average on watches-brands (README)
    partial_learning_rate: float = 5e-4  # peak Adam learning rate of partial fine-tuning (one warm-up epoch); 5e-4 beat 1e-4 on val
    partial_shift: int = 1  # augmentation: random shift of the cached maps by up to this many cells (at 224 px one cell is 32 px of input at block6b/6c, 16 px at block6a)
    partial_mixup: float = 0.0  # augmentation: mixup Beta(a, a) on the cached maps (0 = off)
    partial_batchnorm: bool = False  # partial fine-tuning trains BatchNorm too (batch statistics while training, moving statistics adapt, scale and offset learnt), as ordinary fine-tuning does; off = BatchNorm frozen. +0.012 val F1 for one Lite0 (mean of 3 runs against 6) for about 43% longer epochs, but 0.804 held-back F1 in `best` against its 0.798-0.810 without (README)
    refit: bool = True  # after partial fine-tuning was measured on val, train it again on train + val (same settings, last epoch) for the bundle; the val figures stay the validated run's (+0.019 held-back F1 on watches-brands, mean of two runs each, for one more fine-tuning run per member; README)
    partial_zoom: float = 0.0  # augmentation: also cache the maps of each image's centred crop keeping this share of each side (and its mirror), a view training picks at random (0 = off)
    memory_blend: float = 0.0  # share of a nearest-neighbour memory in each answer (the train images vote by the cosine likeness of their features; classify.memory); 0 = off, the head alone. Val images join the memory only when the member was refit. At 0.5 it added 0.013-0.018 val F1 to the default's ensemble on watches-brands but nothing held back (0.803 / 0.801 against 0.802-0.812; README). Not with fine_tune_layers
    memory_temperature: float = 0.02  # softmax temperature of the memory's cosine similarities (lower = fewer, closer neighbours vote)
    fine_tune_layers: int = 0  # unfreeze this many top layers of the base for phase 2 (0 = no phase 2)
    fine_tune_epochs: int = 6  # most phase-2 epochs
    fine_tune_learning_rate: float = 1e-4  # Adam learning rate of phase 2 (low, to keep pretrained features)
    feature_batch_size: int = 32  # images per forward pass when computing features
    cache_dir: str = ""  # feature cache folder; "" = ~/.cache/detcrop/features
    runtime: str = "auto"  # feature pass runtime: "auto" (ONNX Runtime where installed, else TensorFlow), "onnx" or "tensorflow"; same cache
    mistakes: int = 16  # worst mistakes shown in mistakes.png
    target_accuracy: float = 0.0  # > 0: the unknown threshold keeps this accuracy on the val split (answering less); 0 = keep 95% of correct answers
    ensemble: str = "auto"  # more models trained like the first on the same split and averaged: comma-separated backbone names (e.g. efficientnet-lite2); "auto" = the backbone's measured companions (efficientnet-lite2 for efficientnet-lite0, none for others), "" = one model

    def __post_init__(self) -> None:
        checks = (
            (self.input_size >= 32, "input_size must be >= 32 pixels", self.input_size),
            (self.runtime in RUNTIMES, f"runtime must be one of {', '.join(RUNTIMES)}", self.runtime),
            (self.epochs >= 1 and self.partial_head_epochs >= 1 and self.batch_size >= 1
             and self.feature_batch_size >= 1,
             "epochs, partial_head_epochs, batch_size and feature_batch_size must be >= 1",
             (self.epochs, self.partial_head_epochs, self.batch_size, self.feature_batch_size)),
            (self.learning_rate > 0 and self.fine_tune_learning_rate > 0, "learning rates must be > 0",
             (self.learning_rate, self.fine_tune_learning_rate)),
            (0.0 < self.val_ratio < 1.0, "val_ratio must be between 0 and 1 (exclusive)", self.val_ratio),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)", self.dropout),
            (0.0 <= self.target_accuracy <= 1.0, "target_accuracy must be in [0, 1] (0 = off)", self.target_accuracy),
            (self.partial_zoom == 0 or 0.5 <= self.partial_zoom <= 0.99, "partial_zoom must be 0 (off) or in "
             "[0.5, 0.99]", self.partial_zoom),
            (self.partial_epochs >= 1 and self.partial_learning_rate > 0 and self.partial_shift >= 0
             and self.partial_mixup >= 0, "partial_epochs >= 1, partial_learning_rate > 0, partial_shift >= 0 "
             "and partial_mixup >= 0", (self.partial_epochs, self.partial_learning_rate, self.partial_shift,
                                        self.partial_mixup)),
            (not (self.train_from not in ("", "auto") and self.fine_tune_layers), "train_from and fine_tune_layers "
             "are two ways to fine-tune; choose one", (self.train_from, self.fine_tune_layers)),
            (0.0 <= self.memory_blend <= 1.0 and self.memory_temperature > 0, "memory_blend must be in [0, 1] "
             "(0 = off) and memory_temperature > 0", (self.memory_blend, self.memory_temperature)),
            (not (self.memory_blend and self.fine_tune_layers), "memory_blend needs the features of a frozen or "
             "partially fine-tuned base; it does not go with fine_tune_layers", (self.memory_blend,
                                                                                self.fine_tune_layers)),
            (0.0 <= self.label_smoothing < 1.0, "label_smoothing must be in [0, 1)", self.label_smoothing),
            (self.hidden_units >= 0 and self.patience >= 1, "hidden_units must be >= 0 and patience >= 1",
             (self.hidden_units, self.patience)),
            (self.fine_tune_layers >= 0 and self.fine_tune_epochs >= 0 and self.mistakes >= 0,
             "fine_tune_layers, fine_tune_epochs and mistakes must be >= 0",
             (self.fine_tune_layers, self.fine_tune_epochs, self.mistakes)),
        )
        for passed, expected, received in checks:
            if not passed:
                raise ConfigError(f"TrainConfig: {expected}, got {received!r}")


@dataclass
class TrainResult:
    """What `train` produced."""

    run_dir: Path
    metrics: dict  # evaluate_predictions on the val split
    history: dict[str, list]  # per epoch: loss, accuracy, val_loss, val_accuracy, lr, phase
    skipped: list[tuple[str, str]]  # (path, reason) of images that could not be used
    timings: dict[str, float]  # seconds per step: features, head, fine_tune, total
    report_paths: dict[str, Path]


#: `detcrop train --preset NAME`: named recipes as TrainConfig overrides (a --config file and flags override
#: them). "default" is TrainConfig itself; the README's held-back table measures each one.
PRESETS: dict[str, dict] = {
    # One frozen base and a head on cached features: the quickest (the recipe before partial fine-tuning).
    "fast": {"train_from": "", "ensemble": "", "input_size": 320, "refit": False},
    # Lite0 + Lite2 partially fine-tuned at 224 px, each refit on train + val: about 14.2-15.0 minutes for 3,000 photos.
    "default": {},
    # The best measured recipe that trains 3,000 photos in at most 30 minutes on 2 CPU cores (about 16.5): the
    # default's members with Lite2 cut at block6b like Lite0 and the head given its full epochs. Held-back F1
    # 0.810 / 0.804 / 0.807 / 0.798 in four runs, within the noise of the default's 0.802 (README).
    "best": {"backbone": "efficientnet-lite0", "input_size": 224, "ensemble": "efficientnet-lite2",
             "partial_epochs": 12, "refit": True, "train_from": "block6b", "partial_head_epochs": 60},
}


def make_train_config(overrides: dict | None = None, preset: str = "default") -> TrainConfig:
    """`TrainConfig` of `preset` (see PRESETS) with `overrides`; unknown keys raise a ConfigError naming the nearest key."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    return build_config(TrainConfig, PRESETS[preset] | (overrides or {}))


def resolve_train_from(config: TrainConfig) -> str:
    """The cut partial fine-tuning starts at: "" (off), `config.train_from`, or the backbone's own for "auto"."""
    from detcrop.classify.partial_finetune import DEFAULT_CUTS

    if config.train_from != "auto":
        return config.train_from
    if config.fine_tune_layers:
        return ""  # full fine-tuning was asked for
    return DEFAULT_CUTS.get(config.backbone, "")


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


# --------------------------------------------------------------------------- one index space


@dataclass(frozen=True)
class Examples:
    """The usable images of a dataset: row i of `paths`, `labels` and `sha256s` is image i.

    `train` and `val` are row indices. Every later step (features, head, fine-tuning, reports)
    indexes these rows; `keep` is the one way rows leave.
    """

    paths: tuple[Path, ...]
    labels: np.ndarray  # int64 class index per row
    sha256s: tuple[str, ...]
    train: np.ndarray  # int64 rows of the train side
    val: np.ndarray  # int64 rows of the val side

    def keep(self, rows: Sequence[int]) -> "Examples":
        """Only `rows` (ascending), renumbered 0..len(rows)-1; the split follows them."""
        rows = np.asarray(rows, dtype=np.int64)
        new_row = np.full(len(self.paths), -1, dtype=np.int64)
        new_row[rows] = np.arange(len(rows))
        return Examples(
            paths=tuple(self.paths[row] for row in rows), labels=self.labels[rows],
            sha256s=tuple(self.sha256s[row] for row in rows),
            train=new_row[self.train][new_row[self.train] >= 0], val=new_row[self.val][new_row[self.val] >= 0],
        )

    def labelled(self) -> np.ndarray:
        """The train and val rows together, ascending (what a refit trains on)."""
        return np.sort(np.concatenate([self.train, self.val]))

    def identity(self) -> str:
        """A digest of the rows, their content and the split (a fine-tuning backup must match it)."""
        payload = json.dumps([[str(path) for path in self.paths], list(self.sha256s), self.labels.tolist(),
                              self.train.tolist(), self.val.tolist()])
        return hashlib.sha256(payload.encode()).hexdigest()


def split_examples(dataset_dir: Path, config: TrainConfig) -> tuple[Examples, list[str], list[tuple[str, str]]]:
    """Step 1: (examples with their train/val split, class names, skipped (path, reason))."""
    dataset = scan_class_folders(dataset_dir)
    class_names = list(dataset.class_names)
    if len(class_names) < 2:
        raise TrainingError(f"{dataset_dir}: expected at least 2 class folders, found {len(class_names)}")
    skipped: list[tuple[str, str]] = [(str(item.path), item.reason) for item in dataset.skipped]
    sha256_by_path: dict[str, str] = {}
    for sample in dataset.samples:
        try:
            sha256_by_path[str(sample.path)] = file_sha256(sample.path)
        except OSError as error:
            skipped.append((str(sample.path), f"cannot read file ({error})"))
    if not sha256_by_path:
        raise TrainingError(f"{dataset_dir}: no readable image files in its class folders")
    require_readable_images(dataset)  # the check `validate` makes: ShortClassError names the class
    # The split sees every sample (an unreadable one is a group of its own), so one unreadable
    # file never moves the others to another side; the unreadable ones are dropped after.
    split = split_class_folders(dataset, config.val_ratio, seed=config.seed, sha256_by_path=sha256_by_path,
                                source_by_path=source_hashes_from_manifest(dataset_dir))
    everything = Examples(
        paths=tuple(sample.path for sample in dataset.samples),
        labels=np.asarray([sample.label_index for sample in dataset.samples], dtype=np.int64),
        sha256s=tuple(sha256_by_path.get(str(sample.path), "") for sample in dataset.samples),
        train=np.asarray(split.train, dtype=np.int64), val=np.asarray(split.val, dtype=np.int64),
    )
    examples = everything.keep([row for row, digest in enumerate(everything.sha256s) if digest])
    if not len(examples.val):
        raise TrainingError(f"{dataset_dir}: val_ratio={config.val_ratio} left no validation images; "
                            "add images or raise val_ratio")
    logger.info("%d classes, %d train and %d val images", len(class_names), len(examples.train), len(examples.val))
    return examples, class_names, skipped


# --------------------------------------------------------------------------- features


@dataclass
class FeatureExtractor:
    """The frozen base and what `compute_features` needs around it."""

    model: Any  # keras.Model: (S, S, 3) pixels 0..255 -> pooled features
    base: Any  # the backbone, shared with the composed model
    preprocessing: list  # keras layers from 0..255 to the base's input range
    weights_source: str  # exactly which weights (goes into the bundle and the cache key)
    cache: Any  # features.FeatureCache


def build_extractor(config: TrainConfig) -> FeatureExtractor:
    """The backbone of `config` behind a pooled-feature model, with its feature cache."""
    from detcrop.classify.features import FeatureCache, build_feature_model, default_cache_dir

    model, source, base, preprocessing = build_feature_model(
        config.backbone, config.input_size, config.weights or None, config.seed)
    cache = FeatureCache(config.cache_dir or default_cache_dir(), config.backbone, config.input_size, source)
    return FeatureExtractor(model, base, preprocessing, source, cache)


def compute_features(examples: Examples, extractor: FeatureExtractor, config: TrainConfig, progress: bool,
                     ray: RaySettings | None = None,
                     ) -> tuple[Examples, dict[str, np.ndarray], list[tuple[str, str]], dict, dict[str, np.ndarray] | None]:
    """Step 2: (examples that have features, variant -> features row-aligned with them, skipped, cache counts, maps).

    With partial fine-tuning (`resolve_train_from`), the pass runs the base up to the cut and
    caches those maps (`partial_finetune.ActivationCache`); the frozen head's features are then
    ``pool(upper(maps))`` and `maps` (variant -> activations, row-aligned too) is returned for
    step 4. Otherwise the pass runs the whole base into the feature cache and `maps` is None.
    With `ray`, the images without cached outputs go through Ray Data (`classify.ray_features`).
    """
    from detcrop.classify.features import extract_features

    variants = ("orig", "flip") if (config.flip_features or config.tta_flip) else ("orig",)
    train_from = resolve_train_from(config)
    if train_from:
        from detcrop.classify.partial_finetune import ActivationCache, activation_model, default_activation_cache_dir

        model, upper, cut_name = activation_model(extractor.base, extractor.preprocessing, train_from,
                                                  config.input_size)
        cache_root = Path(config.cache_dir) / "activations" if config.cache_dir else default_activation_cache_dir()
        cache = ActivationCache(cache_root, config.backbone, config.input_size, extractor.weights_source, cut_name)
        from detcrop.classify.features import zoom_variants

        # The map augmentation picks the mirror (and a zoomed view, when asked) at random.
        variants = ("orig", "flip", *zoom_variants(config.partial_zoom))
    else:
        model, cache = extractor.model, extractor.cache
    feature_pass = None
    runtime = resolve_runtime(config.runtime)
    if ray is not None:
        from detcrop.classify.ray_features import RayFeaturePass

        feature_pass = RayFeaturePass(model, config.backbone, config.input_size, config.seed, runtime,
                                      ray, config.feature_batch_size, train_from=train_from)
    elif runtime == "onnx":
        from detcrop.classify.onnx_runtime import OnnxFeatureModel

        model = OnnxFeatureModel(model, config.input_size)
    result = extract_features(examples.paths, examples.sha256s, model, cache, config.input_size,
                              variants, config.feature_batch_size, progress, feature_pass)
    examples = examples.keep(result.kept)  # result.features rows follow result.kept
    if not len(examples.train) or not len(examples.val):
        raise TrainingError("no loadable images left on the train or val side")
    counts = {"folder": str(cache.folder), "computed": result.computed, "cached": result.cached}
    maps, features = None, result.features
    if train_from:
        from detcrop.classify.partial_finetune import pooled_features

        maps = features
        features = pooled_features(upper, {variant: maps[variant] for variant in ("orig", "flip")})
    return examples, features, result.skipped, counts, maps


# --------------------------------------------------------------------------- head


def class_weights(labels: np.ndarray, classes: int) -> dict[int, float]:
    """Inverse-frequency loss weight of each class id (0 for a class with no examples)."""
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (classes * np.maximum(counts, 1)), 0.0)
    return {index: float(weight) for index, weight in enumerate(weights)}


def steady_stream(data):
    """`data` with tf.data's autotuning off: what every stream `fit` reads here goes through.

    With autotuning on, ending a fit (and, before the partial fine-tuning stream repeated,
    starting each epoch) often waited 10-20 s with both cores idle: 3 of 6 short back-to-back
    fits waited 17-22 s after their last epoch, none with autotuning off, at the same speed per
    epoch (README, "The stall fix"). These streams set their own map and prefetch sizes.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return data.with_options(options)


def _epoch_batches(inputs: np.ndarray, targets: np.ndarray, batch_size: int, seed: int, epochs: int,
                   initial_epoch: int = 0, transform: Callable | None = None):
    """A tf.data stream of `epochs - initial_epoch` epochs; epoch e is shuffled by ``rng([seed, e])``.

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


def _in_order_batches(inputs: np.ndarray, targets: np.ndarray, batch_size: int, transform: Callable | None = None):
    import tensorflow as tf

    stream = tf.data.Dataset.from_tensor_slices((inputs, targets)).batch(batch_size)
    return steady_stream(stream.map(transform) if transform is not None else stream)


class EpochLog:
    """Collects history rows and logs one line per epoch (the CLI shows them as progress).

    Every phase records through it (head, fine-tune here; partial and refit in
    classify.partial_finetune). With a `path`, the history is written there after each epoch.
    A phase without validation (refit) records None for the val figures.
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
                logger.info("%s epoch %d: %s", log.phase, epoch + 1, " ".join(
                    f"{key} {value:.2e}" if key == "lr" else f"{key} {value:.4f}"
                    for key, value in row.items() if isinstance(value, float)))
                if log.path is not None:
                    atomic_write_json(log.path, log.history)

        return Recorder()


class _CancelWatch:
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


def head_val_accuracy(head, examples: "Examples", features: dict[str, np.ndarray]) -> float:
    """Accuracy of the frozen-feature `head` on the val split (no flip TTA): the bar fine-tuning must beat."""
    predicted = np.asarray(head(features["orig"][examples.val], training=False)).argmax(1)
    return float((predicted == examples.labels[examples.val]).mean())


def build_head(feature_channels: int, classes: int, dropout: float, seed: int, hidden_units: int = 0):
    """The head on pooled features: dropout + [dense ReLU + dropout] + dense softmax.

    Global average pooling happens before the feature cache, so the head starts from vectors.
    On watches-brands a hidden layer of 512 beat the linear head by about 0.04 macro F1.
    """
    import keras

    inputs = keras.Input((feature_channels,), name="features")
    x = keras.layers.Dropout(dropout, seed=seed, name="head_dropout")(inputs)
    if hidden_units:
        x = keras.layers.Dense(hidden_units, activation="relu", name="head_hidden",
                               kernel_initializer=keras.initializers.GlorotUniform(seed=seed))(x)
        x = keras.layers.Dropout(dropout, seed=seed + 1, name="head_hidden_dropout")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="head_dense",
                                 kernel_initializer=keras.initializers.GlorotUniform(seed=seed))(x)
    return keras.Model(inputs, outputs, name="head")


def _compile(model, learning_rate: float, label_smoothing: float) -> None:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )


def fit_head(config: TrainConfig, examples: Examples, features: dict[str, np.ndarray], classes: int,
             run_dir: Path, history: dict[str, list], callbacks: Sequence = (), tag: str = ""):
    """Step 3: train the head on cached features (mirrored ones too with `flip_features`); returns it.

    Its history rows go into `history` as phase `tag` + "head" (`tag` names an ensemble member). It runs at
    most `config.epochs` epochs, or `config.partial_head_epochs` when partial fine-tuning follows.
    """
    import keras

    train_x, train_y = features["orig"][examples.train], examples.labels[examples.train]
    if config.flip_features:
        train_x = np.concatenate([train_x, features["flip"][examples.train]])
        train_y = np.concatenate([train_y, train_y])
    val_x, val_y = features["orig"][examples.val], examples.labels[examples.val]
    head = build_head(train_x.shape[1], classes, config.dropout, config.seed, config.hidden_units)
    _compile(head, config.learning_rate, config.label_smoothing)
    epochs = min(config.epochs, config.partial_head_epochs) if resolve_train_from(config) else config.epochs
    best, watch = BestWeights(), _CancelWatch("head")
    train_data, steps = _epoch_batches(train_x, keras.utils.to_categorical(train_y, classes).astype(np.float32),
                                       config.batch_size, config.seed, epochs)
    head.fit(
        train_data, steps_per_epoch=steps, epochs=epochs, verbose=0, shuffle=False,  # _epoch_batches shuffles
        validation_data=(val_x, keras.utils.to_categorical(val_y, classes)), validation_batch_size=config.batch_size,
        class_weight=class_weights(train_y, classes) if config.class_weights else None,
        callbacks=[
            *callbacks,
            watch.callback(),
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience),
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(1, config.patience // 2)),
            best.callback(),
            EpochLog(history, run_dir / HISTORY_NAME, tag + "head").callback(),
            tensorboard_callback(run_dir, tag + "head"),
        ],
    )
    watch.raise_if_cancelled(run_dir)
    head.set_weights(best.weights)
    return head


def compose_model(input_size: int, preprocessing: list, base, head, augmentation: list | None = None):
    """One model: pixels 0..255 (any size) -> resize -> [augmentation] -> preprocessing -> base -> GAP -> head."""
    import keras

    from detcrop.classify.bundle import resize_layer

    inputs = keras.Input((None, None, 3), name="pixels")
    x = resize_layer(input_size)(inputs)
    for layer in augmentation or []:
        x = layer(x)
    for layer in preprocessing:
        x = layer(x)
    # No training=False here: Keras 3 passes fit's training flag to every layer of a nested model whatever this
    # call says. BatchNorm stays in inference mode when fine-tuning because `fine_tune` freezes it.
    x = base(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = head(x)
    return keras.Model(inputs, outputs, name="classifier")


# --------------------------------------------------------------------------- fine-tuning


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


def _resized_uint8(images: Sequence[np.ndarray], input_size: int) -> np.ndarray:
    """Images at the input size, rounded to uint8 to keep the fine-tuning arrays small."""
    from detcrop.classify.bundle import resize_images, resize_layer

    layer = resize_layer(input_size)
    batch = np.zeros((len(images), input_size, input_size, 3), dtype=np.uint8)
    for index, image in enumerate(images):
        batch[index] = np.clip(np.round(resize_images([image], input_size, layer)[0]), 0, 255)
    return batch


class _FineTuneBackup:
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

    def restore(self, state: dict, model, best: "_FineTuneBest") -> None:
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

    def save(self, epoch: int, model, best: "_FineTuneBest", rows: dict, schedule: dict) -> None:
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
class _FineTuneBest:
    """The best fine-tuned weights; they must beat phase 1's val accuracy to count."""

    value: float
    epoch: int = -1
    weights: list | None = field(default=None, repr=False)


def fine_tune(config: TrainConfig, extractor: FeatureExtractor, head, examples: Examples,
              val_images: Sequence[np.ndarray], phase1_accuracy: float, classes: int, run_dir: Path,
              history: dict[str, list], callbacks: Sequence = (), progress: bool = False, tag: str = "",
              ) -> tuple[Any, list[tuple[str, str]]]:
    """Step 4: unfreeze the top of the base and train everything at a low learning rate.

    `val_images` are the originals of ``examples.val`` (loaded once by the caller). Returns
    (the composed model with the best weights, skipped train images). The fine-tuned weights
    replace phase 1's only if their val accuracy beats `phase1_accuracy`.
    """
    import keras
    import tensorflow as tf

    base = extractor.base
    train_images, kept, skipped = load_images([examples.paths[row] for row in examples.train], progress)
    train_y = examples.labels[examples.train][kept]
    val_y = examples.labels[examples.val]
    one_hot = lambda labels: keras.utils.to_categorical(labels, classes).astype(np.float32)  # noqa: E731
    to_float = lambda x, y: (tf.cast(x, tf.float32), y)  # noqa: E731
    val_data = _in_order_batches(_resized_uint8(val_images, config.input_size), one_hot(val_y), config.batch_size,
                                 to_float)

    base.trainable = True
    layers = [layer for layer in base.layers if layer.weights]
    frozen_count = max(0, len(layers) - config.fine_tune_layers)
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
    _compile(model, config.fine_tune_learning_rate, config.label_smoothing)
    phase1_weights = model.get_weights()

    backup = _FineTuneBackup(run_dir / BACKUP_DIR, {"config": config_to_dict(config), "examples": examples.identity()})
    best = _FineTuneBest(value=phase1_accuracy)
    reduce_lr = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2)
    rows: dict[str, list] = {}
    first_row = len(history.get("phase", []))  # history rows from here on are phase 2's
    state = backup.load()
    initial_epoch = 0
    if state is not None:
        backup.restore(state, model, best)
        rows = state["history"]
        initial_epoch = state["epoch"] + 1
        logger.info("resuming fine-tuning after epoch %d from %s", initial_epoch, backup.folder)
    for key, values in rows.items():
        history.setdefault(key, []).extend(values)

    class Checkpoint(keras.callbacks.Callback):
        """Keeps the best weights and saves the backup; runs after the history row is written."""

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

    watch = _CancelWatch("fine-tune")
    train_data, steps = _epoch_batches(np.asarray(_resized_uint8(train_images, config.input_size)), one_hot(train_y),
                                       config.batch_size, config.seed, config.fine_tune_epochs, initial_epoch,
                                       to_float)
    model.fit(train_data, steps_per_epoch=steps, validation_data=val_data, epochs=config.fine_tune_epochs,
              initial_epoch=initial_epoch, verbose=0, shuffle=False,  # _epoch_batches shuffles
              class_weight=class_weights(train_y, classes) if config.class_weights else None,
              callbacks=[*callbacks, watch.callback(), reduce_lr,
                         EpochLog(history, run_dir / HISTORY_NAME, tag + "fine-tune").callback(),
                         Checkpoint(), tensorboard_callback(run_dir, tag + "fine-tune")])
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
    return compose_model(config.input_size, extractor.preprocessing, base, head), skipped



def _partial_fine_tune(config: TrainConfig, extractor: FeatureExtractor, head, examples: Examples,
                       features: dict[str, np.ndarray], maps: dict[str, np.ndarray], classes: int, run_dir: Path,
                       history: dict[str, list], callbacks: Sequence, tag: str = ""):
    """Step 4 (default): the top of the base and the head on the cached maps; see classify.partial_finetune.

    With the memory on (`TrainConfig.memory_blend`), the result also carries pooled features
    under the validated weights (`memory_features`: every row's, and the val rows' mirrors when
    `tta_flip`: what val is measured with) and under the bundle's (`bundle_features`: every row's,
    after any refit).
    """
    from detcrop.classify.partial_finetune import (PartialSettings, partial_fine_tune, pooled_features, refit, split_at,
                                                   trained_weights)

    settings = PartialSettings(
        train_from=resolve_train_from(config), epochs=config.partial_epochs,
        learning_rate=config.partial_learning_rate, shift=config.partial_shift, mixup=config.partial_mixup,
        batchnorm=config.partial_batchnorm,
        batch_size=config.batch_size, label_smoothing=config.label_smoothing, class_weights=config.class_weights,
        seed=config.seed)
    frozen_accuracy = head_val_accuracy(head, examples, features)
    upper = split_at(extractor.base, settings.train_from)[1]
    start = trained_weights(upper, head)  # where fine-tuning restores to if it loses, and where a refit starts again
    watch = _CancelWatch("partial")
    result = partial_fine_tune(
        upper, head, settings, maps, examples.labels, examples.train, examples.val, classes,
        frozen_val_acc=frozen_accuracy, tta_flip=config.tta_flip, history=history,
        callbacks=[*callbacks, watch.callback(), tensorboard_callback(run_dir, tag + "partial")], start=start,
        phase=tag + "partial", history_path=run_dir / HISTORY_NAME)
    watch.raise_if_cancelled(run_dir)
    if config.memory_blend and result.improved:
        tick = time.perf_counter()
        result.memory_features = pooled_features(upper, _memory_views(config, maps, examples))
        result.bundle_features = result.memory_features["orig"]
        result.timings["memory"] = time.perf_counter() - tick
    if config.refit and not result.improved:
        logger.info("refit skipped: partial fine-tuning did not beat the frozen head on val, which the bundle keeps")
    elif config.refit:
        # The recipe paid on val: the bundle gets it trained on every labelled image (val too).
        watch = _CancelWatch("refit")
        result.timings["refit"] = refit(
            upper, head, settings, maps, examples.labels, examples.labelled(),
            classes, start, history, phase=tag + "refit", history_path=run_dir / HISTORY_NAME,
            callbacks=[*callbacks, watch.callback(), tensorboard_callback(run_dir, tag + "refit")])
        watch.raise_if_cancelled(run_dir)
        if config.memory_blend:
            tick = time.perf_counter()
            result.bundle_features = pooled_features(upper, {"orig": maps["orig"]})["orig"]
            result.timings["memory"] += time.perf_counter() - tick
    return result


# --------------------------------------------------------------------------- val predictions, reports, bundle


def predict_val(config: TrainConfig, model, head, examples: Examples, features: dict[str, np.ndarray],
                val_images: Sequence[np.ndarray] | None) -> np.ndarray:
    """Step 5a: probabilities of the composed model on ``examples.val``.

    Without fine-tuning the composed model computes exactly head(features), so the cached
    features are reused; after fine-tuning the base changed and `val_images` go through it.
    """
    from detcrop.classify.bundle import predict_images

    if val_images is not None:
        return predict_images(model, val_images, config.input_size, config.tta_flip)
    probabilities = np.asarray(head(features["orig"][examples.val], training=False))
    if config.tta_flip:
        probabilities = (probabilities + np.asarray(head(features["flip"][examples.val], training=False))) / 2
    return probabilities


def write_run_reports(run_dir: Path, config: TrainConfig, examples: Examples, class_names: list[str],
                      probabilities: np.ndarray, history: dict[str, list], val_images: Sequence[np.ndarray] | None,
                      context: dict) -> tuple[dict, dict, dict[str, Path]]:
    """Step 5b: (metrics, metrics with the run's context, report paths); the mistakes grid shows val images."""
    from detcrop.classify.reports import evaluate_predictions, worst_mistakes, write_reports

    val_y = examples.labels[examples.val]
    metrics = evaluate_predictions(val_y, probabilities, class_names)
    mistakes = []
    for position, true, predicted, probability in worst_mistakes(list(range(len(val_y))), val_y, probabilities,
                                                                  config.mistakes):
        try:
            image = val_images[position] if val_images is not None else \
                load_image_array(examples.paths[examples.val[position]])
        except ImageError:
            continue
        mistakes.append((image, true, predicted, probability))
    metrics_with_context = metrics | {"split": "val", "train_images": int(len(examples.train)),
                                      "val_images": int(len(val_y))} | context
    return metrics, metrics_with_context, write_reports(run_dir, metrics_with_context, history, mistakes)


def choose_threshold(config: TrainConfig, probabilities: np.ndarray, val_y: np.ndarray) -> tuple[float, str]:
    """Step 5c: (the unknown threshold `predict` uses, the rule that chose it) from the val predictions."""
    from detcrop.classify.calibration import choose_unknown_threshold, threshold_for_accuracy

    if not config.target_accuracy:
        return choose_unknown_threshold(probabilities, val_y), "keeps 95% of correct val answers"
    threshold, reached = threshold_for_accuracy(probabilities, val_y, config.target_accuracy)
    rule = f"val accuracy >= {config.target_accuracy:g} of the answered"
    if not reached:
        logger.warning("no threshold keeps val accuracy at %.3f; using %.4f, the most accurate one",
                       config.target_accuracy, threshold)
        rule += " (not reached: the most accurate threshold over >= 5% of val)"
    return threshold, rule


def save_run_bundle(run_dir: Path, dataset_dir: Path, model, config: TrainConfig, class_names: list[str],
                    weights_source: str, metrics: dict, unknown_threshold: float,
                    backbone: str | None = None) -> None:
    """Step 6: model.keras + bundle.json, with the dataset's crop settings so predict crops alike."""
    import keras

    from detcrop.classify.bundle import library_versions, save_bundle

    metadata = {
        "class_names": class_names,
        "input_size": config.input_size,
        "backbone": backbone or config.backbone,  # an ensemble's: its members' joined by "+"
        "weights_source": weights_source,
        "metrics": {key: metrics[key] for key in ("accuracy", "macro_f1", "weighted_f1", "samples")}
                   | {key: metrics[key] for key in ("refit",) if key in metrics},  # the members refit after val
        "config": config_to_dict(config),
        "tta_flip": config.tta_flip,
        # `predict` reports "unknown" under this; see choose_threshold and classify.calibration.
        "unknown_threshold": unknown_threshold,
        "versions": library_versions() | {"keras_backend": keras.backend.backend()},
        "dataset": str(dataset_dir),
    }
    crop_config_path = dataset_dir / "crop_config.json"
    if crop_config_path.is_file():
        try:
            metadata["crop_config"] = json.loads(crop_config_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            logger.warning("%s: unreadable crop config, not copied into the bundle (%s)", crop_config_path, error)
    save_bundle(run_dir, model, metadata)


@dataclass
class Member:
    """One trained model of a run (the run's only one, or one member of its ensemble)."""

    backbone: str
    input_size: int
    weights_source: str
    model: Any  # keras.Model: pixels 0..255 (any size) -> probabilities
    examples: Examples  # the examples that had features (row-aligned with the probabilities' val rows)
    probabilities: np.ndarray  # on examples.val, flip-TTA averaged when asked
    val_images: list | None  # the val originals when fine-tuning loaded them
    skipped: list[tuple[str, str]]
    cache_counts: dict
    split: dict  # {"train": [paths], "val": [paths]}
    refit: bool = False  # the model was trained again on train + val after its val figures were measured


#: What `TrainConfig(ensemble="auto")` adds to each backbone (chosen on watches-brands' val split; README).
DEFAULT_ENSEMBLES = {"efficientnet-lite0": "efficientnet-lite2"}


def resolve_ensemble(config: TrainConfig) -> str:
    """The backbones trained beside `config.backbone`: `config.ensemble`, or for "auto" the backbone's own."""
    if config.ensemble != "auto":
        return config.ensemble
    if config.fine_tune_layers:
        return ""  # full fine-tuning was asked for: one model
    return DEFAULT_ENSEMBLES.get(config.backbone, "")


def member_configs(config: TrainConfig) -> list[TrainConfig]:
    """The config of each model `train` fits: `config` itself, then one per `config.ensemble` backbone.

    A member trains like the first on the same split and input size, from its backbone's
    default weights, with seed ``config.seed + its position`` (another head initialisation and
    shuffle, so two members of one backbone differ too).
    """
    from detcrop.classify.backbones import get_backbone

    configs = [config]
    for backbone in filter(None, (part.strip() for part in resolve_ensemble(config).split(","))):
        get_backbone(backbone)  # an unknown name raises, naming the known ones
        configs.append(replace(config, backbone=backbone, ensemble="", weights="", seed=config.seed + len(configs)))
    return configs


def _train_member(config: TrainConfig, examples: Examples, classes: int, run_dir: Path, history: dict[str, list],
                  timings: dict[str, float], callbacks: Sequence, progress: bool, ray: RaySettings | None,
                  tag: str = "") -> Member:
    """Steps 2-4 for one model: features, head, fine-tuning; its val probabilities.

    Its history rows are appended to the run's `history` with phases named `tag` + phase
    ("member1 head"), so history.json shows every member's epochs so far while it trains.
    """
    tick = time.perf_counter()
    extractor = build_extractor(config)
    examples, features, skipped, cache_counts, maps = compute_features(examples, extractor, config, progress, ray)
    timings["features"] = time.perf_counter() - tick
    split = {"train": [str(examples.paths[row]) for row in examples.train],
             "val": [str(examples.paths[row]) for row in examples.val]}
    atomic_write_json(run_dir / SPLIT_NAME, split)  # the same for every member (_combine_members checks)

    tick = time.perf_counter()
    head = fit_head(config, examples, features, classes, run_dir, history, callbacks, tag)
    timings["head"] = time.perf_counter() - tick

    val_images = None
    partial = None
    if resolve_train_from(config):
        tick = time.perf_counter()
        partial = _partial_fine_tune(config, extractor, head, examples, features, maps, classes, run_dir, history,
                                     callbacks, tag)
        del maps
        timings.update({f"partial_{key}": value for key, value in partial.timings.items()})
        timings["partial_fine_tune"] = time.perf_counter() - tick
    model = None  # composed below from the head, unless full fine-tuning composed its own
    if (partial is None or not partial.improved) and config.fine_tune_layers > 0:
        tick = time.perf_counter()
        # The val originals are loaded once: fine-tuning validates on them, the reports show them.
        val_images, kept, unreadable = load_images([examples.paths[row] for row in examples.val])
        if unreadable:  # changed since their features were computed
            skipped += unreadable
            gone = set(examples.val.tolist()) - set(examples.val[kept].tolist())
            rows = [row for row in range(len(examples.paths)) if row not in gone]
            examples, features = examples.keep(rows), {key: value[rows] for key, value in features.items()}
        phase1_accuracy = head_val_accuracy(head, examples, features)
        model, unreadable = fine_tune(config, extractor, head, examples, val_images, phase1_accuracy, classes,
                                      run_dir, history, callbacks, progress, tag)
        skipped += unreadable
        timings["fine_tune"] = time.perf_counter() - tick

    tuned = partial is not None and partial.improved
    refit = config.refit and tuned  # the bundle's base and head were trained on train + val
    if tuned:
        probabilities = partial.val_probabilities  # the composed model's, from the cached val activations
    else:
        probabilities = predict_val(config, model, head, examples, features, val_images)
    if config.memory_blend:  # TrainConfig refuses it with full fine-tuning, whose features are not at hand
        probabilities, head = _with_memory(
            config, head, examples, classes, probabilities,
            partial.memory_features if tuned else _memory_views(config, features, examples),
            partial.bundle_features if tuned else features["orig"], refit)
    if model is None:
        model = compose_model(config.input_size, extractor.preprocessing, extractor.base, head)
    return Member(config.backbone, config.input_size, extractor.weights_source, model, examples, probabilities,
                  val_images, skipped, cache_counts, split, refit=refit)


def _memory_views(config: TrainConfig, arrays: dict[str, np.ndarray], examples: Examples) -> dict[str, np.ndarray]:
    """What the memory is measured with on val: "orig" of every row, and "val_flip" of the val rows with flip TTA."""
    return {"orig": arrays["orig"]} | ({"val_flip": arrays["flip"][examples.val]} if config.tta_flip else {})


def _with_memory(config: TrainConfig, head, examples: Examples, classes: int, probabilities: np.ndarray,
                 validated: dict[str, np.ndarray], bundle_features: np.ndarray, refit: bool) -> tuple[np.ndarray, Any]:
    """(val probabilities, the head with the memory beside it) with the nearest-neighbour memory blended in.

    On val, the train rows are the memory, all under the validated weights (`validated`, see
    `_memory_views`). The bundle's memory holds the bundle's weights' features (`bundle_features`,
    every row) of the train rows, and of the val rows too when the member was `refit` (its base
    and head trained on both); otherwise the bundle is exactly what val measured. See classify.memory.
    """
    from detcrop.classify.memory import blend_probabilities, blend_with_memory, memory_probabilities

    train_rows, val_rows = examples.train, examples.val
    views = [validated["orig"][val_rows]] + ([validated["val_flip"]] if config.tta_flip else [])
    # Every view's queries in one product with the memory (normalised once), then averaged per val row.
    from_memory = memory_probabilities(np.concatenate(views), validated["orig"][train_rows],
                                       examples.labels[train_rows], classes, config.memory_temperature)
    from_memory = from_memory.reshape(len(views), len(val_rows), classes).mean(axis=0)
    blended = blend_probabilities(probabilities, from_memory, config.memory_blend)
    rows = examples.labelled() if refit else train_rows
    return blended, blend_with_memory(head, bundle_features[rows], examples.labels[rows], classes,
                                      config.memory_temperature, config.memory_blend)


def _combine_members(members: list[Member]):
    """(examples, model, val probabilities, val images) of the run: the one member, or their average.

    An ensemble's model resizes the image once, then averages its members' probabilities
    (`keras.layers.Average`). Its val probabilities are the average of the members' on the
    same val images.
    """
    import keras

    first = members[0]
    if len(members) == 1:
        return first.examples, first.model, first.probabilities, first.val_images
    for member in members[1:]:
        if member.split != first.split:  # a file became unreadable between the members' passes
            raise TrainingError(f"ensemble member {member.backbone} saw other images than {first.backbone}; "
                                "did the dataset change while training?")
    from detcrop.classify.bundle import RESIZE_LAYER_NAME, resize_layer

    # Like every bundle model, it starts with its one resize (export cuts the graph there and
    # ONNX has no antialiased resize): the members share it and run from just after their own.
    inputs = keras.Input((None, None, 3), name="pixels")
    resized = resize_layer(first.input_size)(inputs)
    outputs = []
    for index, member in enumerate(members):
        body = keras.Model(member.model.get_layer(RESIZE_LAYER_NAME).output, member.model.output, name=f"member{index}")
        outputs.append(body(resized))
    model = keras.Model(inputs, keras.layers.Average(name="ensemble")(outputs), name="classifier")
    probabilities = np.mean([member.probabilities for member in members], axis=0)
    return first.examples, model, probabilities, first.val_images


def train(dataset_dir: str | os.PathLike, run_dir: str | os.PathLike, config: TrainConfig = TrainConfig(),
          progress: bool = True, callbacks: Sequence = (), ray: RaySettings | None = None) -> TrainResult:
    """Train a classifier on `dataset_dir` (ROOT/<class>/<image>) and write a bundle into `run_dir`.

    `callbacks` are `keras.callbacks.Callback` objects that follow the run: both phases call
    them like any Keras fit (``on_train_begin``, ``on_epoch_end(epoch, logs)`` with ``loss``,
    ``accuracy``, ``val_loss`` and ``val_accuracy``; `epoch` counts from 0 in each phase). The
    head phase's ``self.model`` is named ``"head"``, the fine-tune phase's ``"classifier"``.
    A callback cancels by setting ``self.model.stop_training = True``: the phase stops after
    the current batch and `train` raises `TrainingCancelled` without writing a bundle.
    With `ray`, the feature pass of the frozen base runs on Ray Data (`classify.ray_features`),
    filling the same feature cache; the rest of training runs here.

    >>> result = train("crops/", "runs/watches", make_train_config({"epochs": 30}))  # doctest: +SKIP
    >>> result.metrics["macro_f1"]  # doctest: +SKIP
    """
    from detcrop.classify.bundle import mark_complete, mark_incomplete
    from detcrop.classify.reports import write_coverage_report

    started = time.perf_counter()
    timings: dict[str, float] = {}
    dataset_dir, run_dir = Path(dataset_dir), Path(run_dir)
    # Reports written inside the dataset would be read back as training images. A run folder
    # may hold its dataset (the web page keeps a copy there): reports go to its top level.
    check_output_path(run_dir, "--out", protected=[("the dataset", dataset_dir)], kind="folder")
    if config.cache_dir:
        check_output_path(config.cache_dir, "--cache-dir", protected=[("the dataset", dataset_dir)], kind="folder")
    configs = member_configs(config)  # a bad ensemble entry is refused before any work
    if config.refit and not resolve_train_from(config):
        logger.debug("refit is for partial fine-tuning, which this run does not do (train_from=%r, fine_tune_layers=%d)",
                    config.train_from, config.fine_tune_layers)
    with folder_lock(run_dir, "train"):  # a second train into this run exits naming the first
        mark_incomplete(run_dir)  # first: an old bundle is never served under the new config.json
        atomic_write_json(run_dir / CONFIG_NAME, config_to_dict(config))

        examples, class_names, skipped = split_examples(dataset_dir, config)
        history: dict[str, list] = {}
        members = []
        for index, member_config in enumerate(configs):
            # Members after the first record their history and timings under their name.
            tag = "" if index == 0 else f"member{index} "
            member_timings: dict[str, float] = {}
            member = _train_member(member_config, examples, len(class_names), run_dir, history,
                                   member_timings, callbacks, progress, ray, tag)
            members.append(member)
            skipped += [item for item in member.skipped if item not in skipped]
            timings.update({tag + key: value for key, value in member_timings.items()})
        # Each epoch rewrote it; rows a resumed fine-tuning restored without running an epoch still need writing.
        atomic_write_json(run_dir / HISTORY_NAME, history)
        examples, model, probabilities, val_images = _combine_members(members)
        unknown_threshold, threshold_rule = choose_threshold(config, probabilities, examples.labels[examples.val])
        coverage_rows, coverage_paths = write_coverage_report(run_dir, probabilities, examples.labels[examples.val],
                                                              unknown_threshold)
        timings["total"] = time.perf_counter() - started
        # Members trained again on train + val after these val figures (metrics.json and bundle.json say so).
        refit_members = [member.backbone for member in members if member.refit]
        metrics, metrics_with_context, report_paths = write_run_reports(
            run_dir, config, examples, class_names, probabilities, history, val_images, {
                "skipped": [{"path": path, "reason": reason} for path, reason in skipped],
                "timings_s": {key: round(value, 2) for key, value in timings.items()},
                "feature_cache": members[0].cache_counts, "coverage": coverage_rows,
                "unknown_threshold": unknown_threshold,
                "unknown_threshold_rule": threshold_rule,
                "refit": refit_members,
            })
        report_paths |= coverage_paths
        save_run_bundle(run_dir, dataset_dir, model, config, class_names,
                        " + ".join(member.weights_source for member in members),
                        metrics | ({"refit": refit_members} if refit_members else {}), unknown_threshold,
                        backbone="+".join(member.backbone for member in members))
        mark_complete(run_dir)
        return TrainResult(run_dir, metrics_with_context, history, skipped, timings, report_paths)

"""``fine_tune: partial`` (the default): the top of a frozen base fine-tuned on activations cached once at a cut.

Full fine-tuning runs the whole base forward and backward on every image every epoch, which
on a CPU costs minutes per epoch. Most of that work is in the lower blocks, which a
small dataset should not change anyway. So the base is cut in two at a block (`train_from`,
e.g. ``block6a`` of EfficientNet-Lite0):

- the **lower part** (stem up to the cut) stays frozen: its output for every image and its
  mirror is computed once and cached on disk as float16, keyed like the feature cache
  (image content hash, backbone, input size, weights source, cut; see `ActivationCache`);
- the **upper part** (the blocks from the cut up, the head conv) and the classifier head
  train on those cached maps, BatchNorm frozen and in inference mode, with augmentation that
  works on maps: a cached view chosen at random (the image or its mirror) and random shifts
  of the maps by up to `shift` cells (symmetric padding, then a random crop back to size).

The frozen head that fine-tuning starts from is trained on ``pool(upper(maps))``
(`pooled_features`): only the blocks above the cut run for it, so a run pays for one pass of
the lower part per image instead of that and a second pass through the whole base.

The upper layers are the base's own layers, so training them updates the base in place and
the bundle is composed exactly as for a frozen base. The kept epoch is the best val
accuracy (ties to the lower val loss); the result replaces the frozen head only if it beats
the frozen head's val accuracy. With `TrainConfig.refit`, the recipe val measured is then run
again on train + val for the bundle (`refit`).

Example (what `train` does with ``TrainConfig(train_from="block6a")``; `run` is this for one member)::

    lower, upper, cut = activation_model(base, preprocessing, "block6a", 224)
    maps = extract_features(paths, sha256s, lower, ActivationCache(...), 224, ("orig", "flip")).features
    features = pooled_features(upper, maps)  # the frozen head's, per view
    result = partial_fine_tune(upper, head, settings, maps, labels, train_rows, val_rows, classes)
    refit(upper, head, settings, maps, labels, all_rows, classes, start)  # when it paid and refit is on
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from detcrop.classify.config import resolve_train_from
from detcrop.classify.features import ArrayCache
from detcrop.classify.fitting import BestWeights, class_weights, compile_classifier, phase_callbacks, steady_stream
from detcrop.classify.model import compose_model, head_val_accuracy
from detcrop.classify.strategies import MemberJob, Outcome, flip_averaged
from detcrop.data.cache import cache_dir
from detcrop.data.config import ConfigError

logger = logging.getLogger(__name__)

#: Bumped when the way activations are computed changes (invalidates every cache folder).
ACTIVATION_VERSION = 1
#: Val maps per forward pass while fine-tuning measures each epoch: RESULTS.md#val-batch-size.
VAL_BATCH_SIZE = 256


def default_activation_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/detcrop/activations``, else ``~/.cache/detcrop/activations``."""
    return cache_dir("activations")


class ActivationCache(ArrayCache):
    """Feature maps at one cut of one (backbone, input size, weights source), float16 on disk.

    Same layout and keying as `classify.features.FeatureCache`:
    ``ROOT/<backbone>-<size>px-<cut>-<digest>/<image sha256>[.flip].npy``.
    """

    kind = "cached activations"

    def __init__(self, root: str | os.PathLike, backbone: str, input_size: int, weights_source: str, cut: str):
        super().__init__(root, f"{backbone}-{int(input_size)}px-{cut}", {
            "backbone": backbone,
            "input_size": int(input_size),
            "weights_source": weights_source,
            "cut": cut,  # the maps are the input of this layer
            "resize": "keras.layers.Resizing bilinear antialias",
            "dtype": "float16",
            "activation_version": ACTIVATION_VERSION,
        }, np.float16)


@dataclass(frozen=True)
class PartialSettings:
    """How the top of the base is fine-tuned (the `TrainConfig` fields it comes from in brackets)."""

    train_from: str  # first layer-name prefix that trains, e.g. "block6a" (train_from)
    epochs: int = 12  # epochs on cached activations (partial_epochs)
    learning_rate: float = 5e-4  # peak Adam learning rate, cosine decay to 0 after one warm-up epoch (partial_learning_rate)
    shift: int = 1  # random shift of the maps by up to this many cells (partial_shift)
    batch_size: int = 32
    label_smoothing: float = 0.1
    class_weights: bool = True
    seed: int = 0


@dataclass
class PartialResult:
    """What `partial_fine_tune` did."""

    improved: bool  # False: the frozen head was better on val and the base was restored
    best_epoch: int  # 0-based epoch kept
    val_acc: float  # val accuracy of the kept weights (no TTA)
    val_probabilities: np.ndarray | None  # (len(val_rows), classes) of the kept model, flip-TTA averaged when asked
    timings: dict[str, float]


def split_at(base, train_from: str):
    """(lower, upper, cut layer name): ``base == upper(lower(x))``; `upper` starts at `train_from`.

    The cut is the input of the first layer whose name starts with `train_from`; every layer
    from there on belongs to `upper` (the same layer objects as in `base`).
    """
    import keras

    names = [layer.name for layer in base.layers]
    first = next((index for index, name in enumerate(names) if name.startswith(train_from)), None)
    if first is None or first == 0:
        blocks = sorted({name.split("_")[0] for name in names[1:]})
        raise ConfigError(f"{base.name}: no layer starts with {train_from!r}; block names: {', '.join(blocks)}")
    cut_layer = base.layers[first]
    cut = cut_layer.input
    if isinstance(cut, (list, tuple)):
        raise ConfigError(f"{base.name}: {cut_layer.name} has several inputs; cut at a block start")
    lower = keras.Model(base.input, cut, name=f"{base.name}_below_{train_from}")
    upper = keras.Model(cut, base.output, name=f"{base.name}_from_{train_from}")
    # Layers of `upper` that live below the cut would mean a skip connection across it.
    lower_names = {layer.name for layer in lower.layers}
    crossing = [layer.name for layer in upper.layers[1:] if layer.name in lower_names]
    if crossing:
        raise ConfigError(f"{base.name}: cutting at {train_from!r} crosses a skip connection ({crossing[0]})")
    return lower, upper, cut_layer.name


def activation_model(base, preprocessing, train_from: str, input_size: int):
    """(pixels -> maps at the cut, upper, cut layer name): the frozen lower part behind the preprocessing.

    The maps are what `ActivationCache` holds; `upper` is the base from the cut up (see `split_at`).
    """
    import keras

    lower, upper, cut_name = split_at(base, train_from)
    inputs = keras.Input((input_size, input_size, 3), name="pixels")
    x = inputs
    for layer in preprocessing:
        x = layer(x)
    return keras.Model(inputs, lower(x, training=False), name="activations"), upper, cut_name


def pooled_features(upper, maps: dict[str, np.ndarray], batch_size: int = 64) -> dict[str, np.ndarray]:
    """The frozen base's pooled features from maps cached at the cut, per view: ``pool(upper(maps))``, float32.

    Only the blocks above the cut run, so features of a partial fine-tuning run cost a fraction
    of a second forward pass through the whole base. One small model, traced (not called eagerly:
    RESULTS.md#pooled-features), serves every view.
    """
    import keras

    from detcrop.classify.features import compiled_forward

    first = next(iter(maps.values()))
    inputs = keras.Input(first.shape[1:], name="maps")
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(upper(inputs, training=False))
    model = keras.Model(inputs, pooled, name="pooled_from_maps")
    forward = compiled_forward(model)
    features = {}
    for view, arrays in maps.items():
        outputs = [np.asarray(forward(arrays[start:start + batch_size].astype(np.float32)))
                   for start in range(0, len(arrays), batch_size)]
        features[view] = (np.concatenate(outputs).astype(np.float32) if outputs
                          else np.zeros((0, model.output_shape[-1]), np.float32))
    return features


def _trainable_model(upper, head, map_shape):
    """maps -> upper -> pool -> head; BatchNorm frozen, so in inference mode (RESULTS.md#trained-batchnorm).

    A frozen Keras BatchNormalization always runs in inference mode; a trainable one would follow
    the outer model's training flag whatever the nested call said (Keras 3).
    """
    import keras

    for layer in upper.layers:
        # BatchNorm keeps the statistics learnt on far more images than these.
        layer.trainable = bool(layer.weights) and not isinstance(layer, keras.layers.BatchNormalization)
    inputs = keras.Input(map_shape, name="maps")
    x = upper(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, head(x), name="partial")


def _stacked_views(maps: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """`rows` of every cached view in one array (row v * len(rows) + i is view v of row i), filled in place."""
    first = next(iter(maps.values()))
    stacked = np.empty((len(maps) * len(rows), *first.shape[1:]), first.dtype)
    for position, views in enumerate(maps.values()):
        np.take(views, rows, axis=0, out=stacked[position * len(rows):(position + 1) * len(rows)])
    return stacked


def _train_dataset(views: np.ndarray, labels: np.ndarray, classes: int, settings: PartialSettings,
                   sample_weights: np.ndarray | None):
    """Batches of augmented maps: a random view (the image or its mirror) and a random shift.

    `views` holds every view of each example (`_stacked_views`: row v * len(labels) + i is view v of example i).
    The stream repeats, reshuffled on each pass: fit it with ``steps_per_epoch`` = one pass. A new
    iterator per epoch over a finite dataset, and tf.data's autotuning (off here, `steady_stream`),
    both stalled epochs with the cores idle (RESULTS.md#autotune-stall).
    """
    import tensorflow as tf

    count = len(labels)
    view_count = len(views) // count
    height, width = views.shape[1:3]  # a grid's (maps); unused for tokens
    targets = np.eye(classes, dtype=np.float32)[labels]
    smoothing = settings.label_smoothing
    targets = targets * (1.0 - smoothing) + smoothing / classes
    weights = np.ones(count, np.float32) if sample_weights is None else sample_weights.astype(np.float32)
    shift = settings.shift if views.ndim == 4 else 0  # tokens ([count, length, width]) have no grid to shift
    maps_t = tf.constant(views)

    def augment(index):
        view = tf.random.uniform((), 0, view_count, dtype=tf.int64)
        maps = tf.cast(tf.gather(maps_t, view * count + index), tf.float32)
        if shift:
            padded = tf.pad(maps, [[shift, shift], [shift, shift], [0, 0]], mode="SYMMETRIC")
            dy = tf.random.uniform((), 0, 2 * shift + 1, dtype=tf.int32)
            dx = tf.random.uniform((), 0, 2 * shift + 1, dtype=tf.int32)
            maps = padded[dy:dy + height, dx:dx + width, :]
        return maps, tf.gather(targets_t, index), tf.gather(weights_t, index)

    targets_t, weights_t = tf.constant(targets), tf.constant(weights)
    data = (tf.data.Dataset.range(count)
            .shuffle(len(labels), seed=settings.seed, reshuffle_each_iteration=True)
            .map(augment)
            .batch(settings.batch_size))
    return steady_stream(data.repeat().prefetch(2))


def trained_weights(upper, head) -> tuple[list, list]:
    """The weights partial fine-tuning changes (`upper`'s layers and `head`), for `restore_weights`."""
    return [layer.get_weights() for layer in upper.layers], head.get_weights()


def restore_weights(upper, head, weights: tuple[list, list]) -> None:
    for layer, layer_weights in zip(upper.layers, weights[0]):
        layer.set_weights(layer_weights)
    head.set_weights(weights[1])


def _compiled_run(upper, head, settings: PartialSettings, maps: dict[str, np.ndarray], labels: np.ndarray,
                  rows: np.ndarray, classes: int):
    """(compiled model, its endless augmented batches over `rows`, steps per epoch): what one fine-tuning run fits."""
    import keras

    rows_y = labels[rows]
    model = _trainable_model(upper, head, maps["orig"].shape[1:])
    sample_weights = None
    if settings.class_weights:
        per_class = class_weights(rows_y, classes)
        sample_weights = np.array([per_class[index] for index in range(classes)])[rows_y]
    # The map augmentation draws from TensorFlow's unseeded stateful ops: not bit-for-bit repeatable.
    data = _train_dataset(_stacked_views(maps, rows), rows_y, classes, settings, sample_weights)  # every view trains
    steps = int(np.ceil(len(rows_y) / settings.batch_size))
    warmup = min(steps, steps * settings.epochs // 2)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(1, steps * settings.epochs - warmup), warmup_target=settings.learning_rate,
        warmup_steps=warmup)
    compile_classifier(model, schedule)  # the targets are smoothed in the stream
    return model, data, steps


def partial_fine_tune(upper, head, settings: PartialSettings, maps: dict[str, np.ndarray], labels: np.ndarray,
                      train_rows: np.ndarray, val_rows: np.ndarray, classes: int, frozen_val_acc: float = -1.0,
                      tta_flip: bool = True, callbacks: Sequence = (),
                      start: tuple[list, list] | None = None) -> PartialResult:
    """Fine-tune `upper` (the base from `settings.train_from` up, see `activation_model`) and `head`.

    `maps` holds every image's cached activations per view ("orig", "flip": training picks one
    at random, validation uses both), row-aligned with `labels`; `train_rows` and `val_rows`
    index them. `upper` and `head` are updated in place; when the best epoch does not beat
    `frozen_val_acc` they are restored to `start` (their `trained_weights` before fine-tuning;
    taken here when not given) and `improved` is False. `callbacks` follow the fit (history
    rows: `fitting.EpochLog`).
    """
    import keras

    timings: dict[str, float] = {}
    val_views = {view: maps[view][val_rows].astype(np.float32) for view in ("orig", "flip")}
    start = trained_weights(upper, head) if start is None else start
    model, data, steps = _compiled_run(upper, head, settings, maps, labels, train_rows, classes)
    best = BestWeights()
    tick = time.perf_counter()
    model.fit(data, steps_per_epoch=steps,
              validation_data=(val_views["orig"], keras.utils.to_categorical(labels[val_rows], classes)),
              validation_batch_size=VAL_BATCH_SIZE, epochs=settings.epochs, verbose=0, shuffle=False,
              callbacks=[best.callback(), *callbacks])
    timings["train"] = time.perf_counter() - tick
    val_acc = best.key[0]
    if val_acc <= frozen_val_acc:
        logger.info("partial fine-tuning reached val_acc %.4f, not above the frozen head's %.4f: keeping the "
                    "frozen base and head", val_acc, frozen_val_acc)
        restore_weights(upper, head, start)
        return PartialResult(False, best.epoch, val_acc, None, timings)
    model.set_weights(best.weights)
    probabilities = flip_averaged(lambda views: model.predict(views, batch_size=VAL_BATCH_SIZE, verbose=0),
                                  val_views, tta_flip)
    return PartialResult(True, best.epoch, val_acc, probabilities, timings)


def refit(upper, head, settings: PartialSettings, maps: dict[str, np.ndarray], labels: np.ndarray,
          rows: np.ndarray, classes: int, start: tuple[list, list], callbacks: Sequence = ()) -> float:
    """Fine-tune `upper` and `head` again from `start` (`trained_weights` before fine-tuning) on `rows`; seconds.

    `run` calls it after `partial_fine_tune` chose and measured the recipe on its val split,
    with `rows` = train + val: the same settings and epochs on every labelled image, keeping the
    last epoch, since no rows are left to choose another (RESULTS.md#refit). The val figures
    stay those of the validated run.
    """
    restore_weights(upper, head, start)
    model, data, steps = _compiled_run(upper, head, settings, maps, labels, rows, classes)
    tick = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=settings.epochs, verbose=0, shuffle=False, callbacks=list(callbacks))
    return time.perf_counter() - tick


def settings_of(config) -> PartialSettings:
    """The `PartialSettings` of a `TrainConfig`."""
    return PartialSettings(train_from=resolve_train_from(config), epochs=config.partial_epochs,
                           learning_rate=config.partial_learning_rate, shift=config.partial_shift,
                           batch_size=config.batch_size, label_smoothing=config.label_smoothing,
                           class_weights=config.class_weights, seed=config.seed)


def run(job: MemberJob) -> Outcome:
    """Partial fine-tuning of one member from its trained head; then, when it paid on val and `refit`, the refit."""
    config, examples = job.config, job.examples
    settings = settings_of(config)
    upper = split_at(job.extractor.base, settings.train_from)[1]
    start = trained_weights(upper, job.head)  # where a losing run restores to, and where a refit starts again
    watch, callbacks = phase_callbacks(job.tag + "partial", settings.epochs, job.run_dir, job.history, job.callbacks,
                                       job.progress)
    result = partial_fine_tune(upper, job.head, settings, job.maps, examples.labels, examples.train, examples.val,
                               job.classes, frozen_val_acc=head_val_accuracy(job.head, examples, job.features),
                               tta_flip=config.tta_flip, callbacks=callbacks, start=start)
    watch.raise_if_cancelled(job.run_dir)
    timings = {f"partial_{key}": value for key, value in result.timings.items()}
    model = compose_model(config.input_size, job.extractor.preprocessing, job.extractor.base, job.head)
    if not result.improved:
        if config.refit:
            logger.info("refit skipped: partial fine-tuning did not beat the frozen head on val, which the bundle keeps")
        probabilities = flip_averaged(lambda features: job.head(features, training=False),
                                      {view: job.features[view][examples.val] for view in ("orig", "flip")},
                                      config.tta_flip)
        return Outcome(model, probabilities, examples, timings=timings)
    if config.refit:
        # The recipe paid on val: the bundle gets it trained on every labelled image (val too).
        watch, callbacks = phase_callbacks(job.tag + "refit", settings.epochs, job.run_dir, job.history,
                                           job.callbacks, job.progress)
        timings["refit"] = refit(upper, job.head, settings, job.maps, examples.labels, examples.labelled(),
                                 job.classes, start, callbacks)
        watch.raise_if_cancelled(job.run_dir)
    return Outcome(model, result.val_probabilities, examples, refit=config.refit, timings=timings)

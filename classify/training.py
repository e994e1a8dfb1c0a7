"""Transfer learning on a class-folder dataset, top to bottom (keras-io guides/transfer_learning.py).

`train` is its steps in order, each a named function over ONE index space (`Examples`: row i
of every array is image i):

1. `split_examples`: scan the folders, hash every file and split train/val (grouped by
   content and by source photo when the dataset has a crop manifest, stratified by class).
2. `compute_features`: features of the frozen base are computed once per image (and its
   mirror) and cached; images without features leave the index space here, and only here.
   With partial fine-tuning the cached pass stops at the cut and the features are pooled from
   the cached maps by the blocks above it (`classify.strategies.partial`).
3. `fit_head`: the head (dropout + dense layers on the pooled features) trains on them with
   early stopping, LR reduction on plateau, the best epoch by val accuracy and class weights.
4. `fine_tune` strategy (`classify.strategies`): ``none`` keeps the head, ``partial`` (the
   default) trains the top blocks on the cached maps, ``full`` the top layers on images.
   Steps 2-4 run once per model of the ensemble (`train_member`); `combine_members` averages them.
5. `choose_threshold`, `write_run_reports`: the unknown threshold, metrics, plots, mistakes.
6. `save_run_bundle`: model.keras + bundle.json. Until it is in place, ``RUN/INCOMPLETE``
   marks the run, and predict, evaluate and export refuse it.

Randomness comes from `TrainConfig.seed` through local generators and seeded layers; nothing
here seeds Python's, NumPy's or TensorFlow's global generators.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from detcrop.classify.backbones import get_backbone
from detcrop.classify.config import (PRESETS, TrainConfig, make_train_config, member_configs,  # noqa: F401 (API)
                                     resolve_ensemble, resolve_fine_tune, resolve_train_from)
from detcrop.classify.examples import Examples
from detcrop.classify.fitting import (BestWeights, TrainingCancelled, TrainingError, class_weights,  # noqa: F401 (API)
                                      compile_classifier, epoch_batches, phase_callbacks)
from detcrop.classify.model import FeatureExtractor, build_extractor, build_head, compose_model  # noqa: F401 (API)
from detcrop.classify.strategies import MemberJob, Outcome
from detcrop.data.atomic import atomic_write_json
from detcrop.data.config import config_to_dict
from detcrop.data.folders import scan_class_folders
from detcrop.data.images import ImageError, file_sha256, load_image_array
from detcrop.data.layout import CONFIG_NAME, HISTORY_NAME, SPLIT_NAME  # noqa: F401 (API)
from detcrop.data.locks import folder_lock
from detcrop.data.outputs import check_output_path
from detcrop.data.ray_runtime import RaySettings
from detcrop.data.runtime import resolve_runtime
from detcrop.data.splits import source_hashes_from_manifest, split_class_folders
from detcrop.data.validate import require_readable_images

logger = logging.getLogger(__name__)


def _strategy(name: str):
    """The `classify.strategies` module that runs ``fine_tune: name``."""
    from detcrop.classify.strategies import full, head_only, partial

    return {"none": head_only, "partial": partial, "full": full}[name]


@dataclass
class TrainResult:
    """What `train` produced."""

    run_dir: Path
    metrics: dict  # evaluate_predictions on the val split
    history: dict[str, list]  # per epoch: loss, accuracy, val_loss, val_accuracy, lr, phase
    skipped: list[tuple[str, str]]  # (path, reason) of images that could not be used
    timings: dict[str, float]  # seconds per step: features, head, fine-tuning phases, total
    report_paths: dict[str, Path]


# --------------------------------------------------------------------------- 1. the split


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


# --------------------------------------------------------------------------- 2. features


def compute_features(examples: Examples, extractor: FeatureExtractor, config: TrainConfig, progress: bool,
                     ray: RaySettings | None = None,
                     ) -> tuple[Examples, dict[str, np.ndarray], list[tuple[str, str]], dict, dict[str, np.ndarray] | None]:
    """Step 2: (examples that have features, variant -> features row-aligned with them, skipped, cache counts, maps).

    With partial fine-tuning, the pass runs the base up to the cut and
    caches those maps (`strategies.partial.ActivationCache`); the frozen head's features are then
    ``pool(upper(maps))`` and `maps` (variant -> activations, row-aligned too) is returned for
    step 4. Otherwise the pass runs the whole base into the feature cache and `maps` is None.
    With `ray`, the images without cached outputs go through Ray Data (`classify.ray_features`).
    """
    from detcrop.classify.features import extract_features

    variants = ("orig", "flip") if (config.flip_features or config.tta_flip) else ("orig",)
    train_from = resolve_train_from(config)  # "" unless partial fine-tuning runs
    if train_from:
        from detcrop.classify.strategies.partial import ActivationCache, activation_model, default_activation_cache_dir

        model, upper, cut_name = activation_model(extractor.base, extractor.preprocessing, train_from,
                                                  config.input_size)
        cache_root = Path(config.cache_dir) / "activations" if config.cache_dir else default_activation_cache_dir()
        cache = ActivationCache(cache_root, config.backbone, config.input_size, extractor.weights_source, cut_name)
        variants = ("orig", "flip")  # the map augmentation picks the mirror at random
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
        from detcrop.classify.strategies.partial import pooled_features

        maps = features
        features = pooled_features(upper, {variant: maps[variant] for variant in ("orig", "flip")})
    return examples, features, result.skipped, counts, maps


# --------------------------------------------------------------------------- 3. the head


def fit_head(config: TrainConfig, examples: Examples, features: dict[str, np.ndarray], classes: int,
             run_dir: Path, history: dict[str, list], callbacks: Sequence = (), tag: str = "", progress: bool = False):
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
    head = build_head(train_x.shape[1], classes, config.dropout, config.seed, config.hidden_units,
                      standardize=train_x if get_backbone(config.backbone).standardize_features else None)
    compile_classifier(head, config.learning_rate, config.label_smoothing)
    epochs = min(config.epochs, config.partial_head_epochs) if resolve_fine_tune(config) == "partial" else config.epochs
    best = BestWeights()
    watch, in_order = phase_callbacks(tag + "head", epochs, run_dir, history, callbacks, progress, before_log=[
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(1, config.patience // 2)),
        best.callback()])
    train_data, steps = epoch_batches(train_x, keras.utils.to_categorical(train_y, classes).astype(np.float32),
                                      config.batch_size, config.seed, epochs)
    head.fit(train_data, steps_per_epoch=steps, epochs=epochs, verbose=0, shuffle=False,  # epoch_batches shuffles
             validation_data=(val_x, keras.utils.to_categorical(val_y, classes)),
             validation_batch_size=config.batch_size,
             class_weight=class_weights(train_y, classes) if config.class_weights else None,
             callbacks=in_order)
    watch.raise_if_cancelled(run_dir)
    head.set_weights(best.weights)
    return head


# --------------------------------------------------------------------------- 4. one model, then the ensemble


@dataclass
class Member:
    """One trained model of a run (the run's only one, or one member of its ensemble)."""

    backbone: str
    input_size: int
    weights_source: str
    outcome: Outcome  # the model, its val probabilities, the rows it kept
    skipped: list[tuple[str, str]]
    cache_counts: dict
    split: dict  # {"train": [paths], "val": [paths]}


def train_member(config: TrainConfig, examples: Examples, classes: int, run_dir: Path, history: dict[str, list],
                 timings: dict[str, float], callbacks: Sequence, progress: bool, ray: RaySettings | None,
                 tag: str = "") -> Member:
    """Steps 2-4 for one model: features, head, then its `fine_tune` strategy.

    Its history rows are appended to the run's `history` with phases named `tag` + phase
    ("member1 head"), so history.json shows every member's epochs so far while it trains.
    """
    tick = time.perf_counter()
    extractor = build_extractor(config)
    examples, features, skipped, cache_counts, maps = compute_features(examples, extractor, config, progress, ray)
    timings["features"] = time.perf_counter() - tick
    split = {"train": [str(examples.paths[row]) for row in examples.train],
             "val": [str(examples.paths[row]) for row in examples.val]}
    atomic_write_json(run_dir / SPLIT_NAME, split)  # the same for every member (combine_members checks)

    tick = time.perf_counter()
    head = fit_head(config, examples, features, classes, run_dir, history, callbacks, tag, progress)
    timings["head"] = time.perf_counter() - tick

    job = MemberJob(config, extractor, head, examples, features, maps, classes, run_dir, history, callbacks, tag,
                    progress)
    outcome = _strategy(resolve_fine_tune(config)).run(job)
    timings.update(outcome.timings)
    return Member(config.backbone, config.input_size, extractor.weights_source, outcome, skipped + outcome.skipped,
                  cache_counts, split)


def combine_members(members: list[Member]):
    """(examples, model, val probabilities, val images) of the run: the one member, or their average.

    An ensemble's model resizes the image once, then averages its members' probabilities
    (`keras.layers.Average`). Its val probabilities are the average of the members' on the
    same val images.
    """
    import keras

    first = members[0].outcome
    if len(members) == 1:
        return first.examples, first.model, first.probabilities, first.val_images
    for member in members[1:]:
        if member.split != members[0].split:  # a file became unreadable between the members' passes
            raise TrainingError(f"ensemble member {member.backbone} saw other images than {members[0].backbone}; "
                                "did the dataset change while training?")
    from detcrop.classify.bundle import RESIZE_LAYER_NAME, resize_layer

    # Like every bundle model, it starts with its one resize (export cuts the graph there and
    # ONNX has no antialiased resize): the members share it and run from just after their own.
    inputs = keras.Input((None, None, 3), name="pixels")
    resized = resize_layer(members[0].input_size)(inputs)
    outputs = []
    for index, member in enumerate(members):
        model = member.outcome.model
        body = keras.Model(model.get_layer(RESIZE_LAYER_NAME).output, model.output, name=f"member{index}")
        outputs.append(body(resized))
    model = keras.Model(inputs, keras.layers.Average(name="ensemble")(outputs), name="classifier")
    probabilities = np.mean([member.outcome.probabilities for member in members], axis=0)
    return first.examples, model, probabilities, first.val_images


# --------------------------------------------------------------------------- 5-6. threshold, reports, bundle


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
            member = train_member(member_config, examples, len(class_names), run_dir, history,
                                  member_timings, callbacks, progress, ray, tag)
            members.append(member)
            skipped += [item for item in member.skipped if item not in skipped]
            timings.update({tag + key: value for key, value in member_timings.items()})
        # Each epoch rewrote it; rows a resumed fine-tuning restored without running an epoch still need writing.
        atomic_write_json(run_dir / HISTORY_NAME, history)
        examples, model, probabilities, val_images = combine_members(members)
        unknown_threshold, threshold_rule = choose_threshold(config, probabilities, examples.labels[examples.val])
        coverage_rows, coverage_paths = write_coverage_report(run_dir, probabilities, examples.labels[examples.val],
                                                              unknown_threshold)
        timings["total"] = time.perf_counter() - started
        # Members trained again on train + val after these val figures (metrics.json and bundle.json say so).
        refit_members = [member.backbone for member in members if member.outcome.refit]
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

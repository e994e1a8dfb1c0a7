"""The from-scratch baseline: a small CNN trained on CIFAR-10, Fashion-MNIST or class folders.

Two recipes:

- ``seed``: the classic TensorFlow tutorial CNN, exactly (Conv2D 32-3x3 relu, MaxPool 2,
  Conv2D 64-3x3 relu, MaxPool 2, Conv2D 64-3x3 relu, Flatten, Dense 64 relu, Dense softmax;
  122,570 parameters at 32x32x3 with 10 classes), pixels scaled to 0..1, Adam 1e-3, batch 32,
  10 epochs, constant learning rate.
- ``fast``: tuned for a 2-core CPU: the seed's layout with batch norm after the second and
  third convolutions and dropout around the hidden layer, pixels scaled to -1..1, batch 128,
  AdamW (weight decay 1e-4) at 3e-3 with a short linear warm-up then cosine decay to zero,
  5 epochs. No augmentation: random flips cost time and lost accuracy at 5 epochs.

Training reads top to bottom in `train_baseline`: tf.data pipelines from uint8 arrays, build
the core model, compile, fit while an `EpochClock` records when each epoch ended and its
test accuracy. `build_serving_model` wraps the core for predict: raw uint8 RGB images of any
size -> resize (antialiased bilinear) -> grayscale for grayscale datasets -> core ->
probabilities. Grayscale datasets (Fashion-MNIST) are fed RGB photos converted to luma
inside the graph (ITU-R 601: 0.299 R + 0.587 G + 0.114 B, Pillow's "L"), so every bundle
takes the same 3-channel input.

Example::

    data = load_dataset("fashion-mnist")
    result = train_baseline(data, build_config(BaselineConfig, {"recipe": "fast"}))
    serving = build_serving_model(result.model, data.image_shape)
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

from detcrop.data.config import ConfigError

if TYPE_CHECKING:  # TensorFlow loads only when a model is built
    import keras

    from detcrop.classify.baseline_data import ArrayDataset

logger = logging.getLogger(__name__)

#: Luma weights of ITU-R 601 (Pillow's RGB -> "L"), used to feed RGB photos to grayscale models.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
#: Parameters of the seed CNN at 32x32x3 with 10 classes (the tutorial's figure).
SEED_PARAMS_CIFAR10 = 122_570
#: Smallest square input the seed CNN accepts: 18 -> 16 -> 8 -> 6 -> 3 -> 1.
MIN_IMAGE_SIZE = 18


@dataclass(frozen=True)
class Recipe:
    """How one recipe builds and trains its model."""

    name: str  # "seed" or "fast"
    epochs: int  # passes over the training set
    batch_size: int  # images per step
    learning_rate: float  # Adam(W) learning rate (the peak, when there is a schedule)
    schedule: str  # "constant" or "warmup-cosine" (linear warm-up for warmup_epochs, cosine to 0)
    warmup_epochs: float  # length of the linear warm-up, in epochs
    weight_decay: float  # AdamW decoupled weight decay (0: plain Adam)
    description: str  # one line for help texts and reports


RECIPES: dict[str, Recipe] = {
    "seed": Recipe(
        name="seed", epochs=10, batch_size=32, learning_rate=1e-3, schedule="constant", warmup_epochs=0.0,
        weight_decay=0.0,
        description="the classic tutorial CNN (122,570 params at 32x32x3), Adam 1e-3, batch 32, 10 epochs",
    ),
    "fast": Recipe(
        name="fast", epochs=5, batch_size=128, learning_rate=3e-3, schedule="warmup-cosine", warmup_epochs=0.3,
        weight_decay=1e-4,
        description="the seed CNN plus batch norm and dropout, AdamW 3e-3 with warm-up + cosine, batch 128, 5 epochs",
    ),
}


@dataclass(frozen=True)
class BaselineConfig:
    """Defaults of `detcrop baseline`; None means "the recipe's value"."""

    dataset: str = "fashion-mnist"  # "cifar10", "fashion-mnist" or a class-folder root (ROOT/<class>/<image>)
    data_dir: str | None = None  # folder with the dataset files; None searches the standard places
    recipe: str = "seed"  # "seed" (the classic CNN, exactly) or "fast" (tuned for a 2-core CPU)
    epochs: int | None = None  # passes over the training set (None: the recipe's)
    batch_size: int | None = None  # images per step (None: the recipe's)
    learning_rate: float | None = None  # peak learning rate (None: the recipe's)
    seed: int = 0  # seeds Python, numpy, TensorFlow, shuffling, subsampling and the folder split
    limit: int | None = None  # use at most this many train and this many test images (quick runs)
    image_size: int = 32  # class folders: images are resized to this square side
    test_ratio: float = 0.2  # class folders: share of images held out as the test set
    allow_download: bool = True  # fall back to keras.datasets (network) when no local copy exists

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ConfigError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        for name in ("epochs", "batch_size", "limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.image_size < MIN_IMAGE_SIZE:
            raise ConfigError(
                f"image_size must be at least {MIN_IMAGE_SIZE} (the seed CNN's three valid 3x3 convolutions "
                f"and two poolings), got {self.image_size}"
            )
        if not 0.0 < self.test_ratio < 1.0:
            raise ConfigError(f"test_ratio must be between 0 and 1, got {self.test_ratio}")

    def resolved(self) -> "BaselineConfig":
        """The same config with the recipe's epochs, batch size and learning rate filled in."""
        recipe = RECIPES[self.recipe]
        return dataclasses.replace(
            self,
            epochs=self.epochs or recipe.epochs,
            batch_size=self.batch_size or recipe.batch_size,
            learning_rate=self.learning_rate or recipe.learning_rate,
        )


# --------------------------------------------------------------------------- models


def build_seed_cnn(input_shape: tuple[int, int, int] = (32, 32, 3), num_classes: int = 10) -> "keras.Model":
    """The classic tutorial CNN; inputs are 0..255 floats (scaled to 0..1 inside).

    >>> build_seed_cnn((32, 32, 3), 10).count_params()  # doctest: +SKIP
    122570
    """
    import keras
    from keras import layers

    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Rescaling(1.0 / 255, name="scale_0_1"),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, activation="relu"),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dense(num_classes, activation="softmax"),
        ],
        name="seed_cnn",
    )


def build_fast_cnn(input_shape: tuple[int, int, int] = (32, 32, 3), num_classes: int = 10) -> "keras.Model":
    """The ``fast`` recipe's CNN; inputs are 0..255 floats (scaled to -1..1 inside).

    The seed's layout (and cost per image) with batch norm after the second and third
    convolutions and dropout around the hidden Dense layer. Batch norm lets a 3x larger
    learning rate and 4x larger batches train it in half the epochs; it is left out after
    the first convolution, where on a CPU it would cost more time than the whole convolution
    (26x26x32 activations per image) and buys little.
    """
    import keras
    from keras import layers

    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale_minus1_1"),
            layers.Conv2D(32, 3, activation="relu", name="conv0"),
            layers.MaxPooling2D(2, name="pool0"),
            layers.Conv2D(64, 3, use_bias=False, name="conv1"),
            layers.BatchNormalization(name="bn1"),
            layers.ReLU(name="relu1"),
            layers.MaxPooling2D(2, name="pool1"),
            layers.Conv2D(64, 3, use_bias=False, name="conv2"),
            layers.BatchNormalization(name="bn2"),
            layers.ReLU(name="relu2"),
            layers.Flatten(name="flatten"),
            layers.Dropout(0.3, name="dropout_features"),
            layers.Dense(64, activation="relu", name="hidden"),
            layers.Dropout(0.15, name="dropout_hidden"),
            layers.Dense(num_classes, activation="softmax", name="probabilities"),
        ],
        name="fast_cnn",
    )


def build_model(recipe: str, input_shape: tuple[int, int, int], num_classes: int) -> "keras.Model":
    """The core model of `recipe` for images of `input_shape` (0..255 floats in, probabilities out)."""
    if recipe == "seed":
        return build_seed_cnn(input_shape, num_classes)
    if recipe == "fast":
        return build_fast_cnn(input_shape, num_classes)
    raise ConfigError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")


def build_serving_model(core: "keras.Model", input_shape: tuple[int, int, int]) -> "keras.Model":
    """Wrap `core` for predict: RGB 0..255 (batch, any height, any width, 3) -> probabilities.

    Resizing (bilinear, antialiased when shrinking) and, for grayscale cores, the RGB to luma
    conversion happen in the graph, so the saved model needs no preprocessing code.
    """
    import keras
    from keras import layers

    from detcrop.classify.bundle import resize_layer

    height, width, channels = input_shape
    if height != width:
        raise ValueError(f"bundles take square inputs; expected height == width, got {height}x{width}")
    # Pixel values 0..255 as float32 (uint8 arrays are converted on the way in), like every bundle.
    inputs = keras.Input(shape=(None, None, 3), name="image")
    x = resize_layer(height)(inputs)
    if channels == 1:
        # A fixed 1x1 convolution is the luma formula and saves as a standard layer.
        to_gray = layers.Conv2D(1, 1, use_bias=False, trainable=False, name="rgb_to_luma")
        x = to_gray(x)
        to_gray.set_weights([np.asarray(LUMA_WEIGHTS, np.float32).reshape(1, 1, 3, 1)])
    outputs = core(x)
    return keras.Model(inputs, outputs, name=f"{core.name}_serving")


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

    data = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle_seed is not None:
        data = data.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    data = data.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE)


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
    import keras

    config = config.resolved()
    recipe = RECIPES[config.recipe]
    keras.utils.set_random_seed(config.seed)
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
    from detcrop.classify.baseline_data import load_dataset
    from detcrop.classify.bundle import save_bundle
    from detcrop.classify.reports import evaluate_predictions, worst_mistakes, write_reports
    from detcrop.data.atomic import atomic_write_json, atomic_write_text
    from detcrop.data.config import config_to_dict

    run_dir = Path(run_dir)
    config = config.resolved()
    if data is None:
        data = load_dataset(
            config.dataset, config.data_dir, image_size=config.image_size, test_ratio=config.test_ratio,
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

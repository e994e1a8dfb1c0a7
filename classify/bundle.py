"""The model bundle: one run folder that stage three scores with, no other file needed.

A bundle is ``RUN/model.keras`` plus ``RUN/bundle.json``. The model takes raw RGB pixel
values 0..255 (uint8 or float) and returns class probabilities; resizing, the backbone's
normalisation, pooling and the head are all layers inside it (built-in Keras layers only, no
Lambda, so it loads with ``safe_mode=True``).

Where resizing happens (one place): the model's first layer after the input is a
``keras.layers.Resizing(input_size, input_size, antialias=True)``, and the model input is
``(None, None, 3)``, so ``model(image[None])`` works for an image of any size.
`Bundle.predict` batches images of different sizes by bringing each one to
``input_size x input_size`` with that same layer first; resizing an image that already has
the target size is exactly the identity, so the result equals a per-image call.
"""

from __future__ import annotations

import difflib
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from detcrop.data.atomic import atomic_write_json, current_umask
from detcrop.data.packages import distribution_version
from detcrop.data.config import read_json_object
from detcrop.data.errors import DetcropError, MissingFileError
from detcrop.data.layout import BUNDLE_NAME, INCOMPLETE_NAME, MODEL_NAME

#: Bumped when a bundle.json field changes meaning; readers refuse newer versions.
BUNDLE_VERSION = 1
#: Keys `save_bundle` requires in the metadata.
REQUIRED_KEYS = ("class_names", "input_size", "backbone", "weights_source", "metrics", "config")
#: Name of the resizing layer inside every bundle model (found again by `Bundle`).
RESIZE_LAYER_NAME = "resize"


def library_versions() -> dict[str, str]:
    """Versions of the libraries a bundle depends on (tf, keras, numpy, detcrop)."""
    return {key: distribution_version(distribution)
            for key, distribution in (("tf", "tensorflow"), ("keras", "keras"), ("numpy", "numpy"),
                                      ("detcrop", "detcrop"))}


def resize_layer(input_size: int):
    """The one resizing layer used in bundles, feature extraction and fine-tuning."""
    import keras

    # Antialiasing matters when large photos shrink to the input size; it is exact
    # identity when the image already has the target size.
    return keras.layers.Resizing(input_size, input_size, interpolation="bilinear", antialias=True,
                                 name=RESIZE_LAYER_NAME)


def resize_images(images: Sequence[np.ndarray], input_size: int, layer=None) -> np.ndarray:
    """Stack uint8 HxWx3 images of any sizes into a float32 (N, size, size, 3) batch, 0..255."""
    layer = layer or resize_layer(input_size)
    batch = np.empty((len(images), input_size, input_size, 3), dtype=np.float32)
    for index, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"image {index}: expected an HxWx3 RGB array, got shape {image.shape}")
        if image.shape[:2] == (input_size, input_size):
            batch[index] = image
        else:
            batch[index] = np.asarray(layer(image[None].astype(np.float32)))[0]
    return batch


class BundleError(DetcropError, ValueError):
    """A bundle.json that is not what `save_bundle` writes (unknown or missing keys, wrong types)."""


@dataclass(frozen=True)
class BundleMetadata:
    """What travels with the weights: bundle.json, read and validated in one place (`from_dict`).

    Like timm's `PretrainedCfg`: label names, input size and how the weights were made go with
    the model, so scoring needs nothing else.
    """

    class_names: tuple[str, ...]  # label index -> class name (sorted folder names)
    input_size: int  # side of the square image the backbone sees
    backbone: str  # registry name, or the baseline's CNN name
    weights_source: str  # exactly which weights the base started from
    metrics: dict  # accuracy, macro_f1, weighted_f1, samples on the val (or test) split
    config: dict  # the resolved training config
    bundle_version: int = BUNDLE_VERSION  # bumped when a field changes meaning
    versions: dict = field(default_factory=library_versions)  # tf, keras, numpy, detcrop (and keras_backend)
    tta_flip: bool = False  # predictions average each image with its mirror, as the metrics were measured
    unknown_threshold: float | None = None  # predict says "unknown" under this top probability
    crop_config: dict | None = None  # the dataset's crop_config.json: predict crops new photos the same way
    dataset: str | None = None  # the dataset it was trained on
    color: str | None = None  # the baseline's note on how RGB photos reach a grayscale model

    def __post_init__(self) -> None:
        names = self.class_names
        if not names or not all(isinstance(name, str) and name for name in names) or len(set(names)) != len(names):
            raise BundleError(f"class_names must be distinct non-empty strings, got {list(names)!r}")
        checks = (
            ("input_size", isinstance(self.input_size, int) and not isinstance(self.input_size, bool)
             and self.input_size >= 1, "a positive integer"),
            ("backbone", isinstance(self.backbone, str), "a string"),
            ("weights_source", isinstance(self.weights_source, str), "a string"),
            ("metrics", isinstance(self.metrics, dict), "an object"),
            ("config", isinstance(self.config, dict), "an object"),
            ("bundle_version", isinstance(self.bundle_version, int) and 1 <= self.bundle_version <= BUNDLE_VERSION,
             f"an integer from 1 to {BUNDLE_VERSION} (a newer detcrop wrote this bundle?)"),
            ("versions", isinstance(self.versions, dict), "an object"),
            ("tta_flip", isinstance(self.tta_flip, bool), "true or false"),
            ("unknown_threshold", self.unknown_threshold is None or (
                isinstance(self.unknown_threshold, (int, float)) and not isinstance(self.unknown_threshold, bool)
                and 0.0 <= self.unknown_threshold <= 1.0), "null or a number in [0, 1]"),
            ("crop_config", self.crop_config is None or isinstance(self.crop_config, dict), "null or an object"),
            ("dataset", self.dataset is None or isinstance(self.dataset, str), "null or a string"),
            ("color", self.color is None or isinstance(self.color, str), "null or a string"),
        )
        for name, passed, expected in checks:
            if not passed:
                raise BundleError(f"{name} must be {expected}, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, data: dict, source: str | os.PathLike = BUNDLE_NAME) -> "BundleMetadata":
        """Validate `data` (a parsed bundle.json); every error names `source` and the key."""
        known = [item.name for item in fields(cls)]
        unknown = [key for key in data if key not in known]
        if unknown:
            hints = []
            for key in unknown:
                nearest = difflib.get_close_matches(key, known, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {nearest[0]!r}?)" if nearest else ""))
            raise BundleError(f"{source}: unknown keys {', '.join(hints)}; known keys: {', '.join(known)}")
        missing = [key for key in REQUIRED_KEYS if key not in data]
        if missing:
            raise BundleError(f"{source}: missing keys {', '.join(missing)}; required keys: {', '.join(REQUIRED_KEYS)}")
        values = dict(data)
        if isinstance(values["class_names"], (list, tuple)):
            values["class_names"] = tuple(values["class_names"])
        else:
            raise BundleError(f"{source}: class_names must be a list of names, got {values['class_names']!r}")
        try:
            return cls(**values)
        except BundleError as error:
            raise BundleError(f"{source}: {error}") from None

    def to_dict(self) -> dict:
        """The JSON object bundle.json holds (optional keys left out when unset)."""
        data = {item.name: getattr(self, item.name) for item in fields(self)}
        data["class_names"] = list(self.class_names)
        return {key: value for key, value in data.items() if value is not None}


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: the Keras model and what travels with it."""

    model: Any  # keras.Model: (None, None, 3) pixels 0..255 -> (classes,) probabilities
    metadata: BundleMetadata = field(repr=False)  # bundle.json, validated
    class_names: tuple[str, ...]  # label index -> class name (sorted folder names)
    input_size: int  # side of the square image the backbone sees

    def predict(self, images: Sequence[np.ndarray], batch_size: int = 32, tta_flip: bool | None = None) -> np.ndarray:
        """Class probabilities, shape (len(images), classes), for uint8 HxWx3 images of any size.

        `tta_flip` (default: the bundle's ``tta_flip`` setting) averages each image's
        probabilities with its mirror's, as the metrics in bundle.json were measured.
        """
        if tta_flip is None:
            tta_flip = self.metadata.tta_flip
        return predict_images(self.model, images, self.input_size, tta_flip, batch_size)


def predict_images(model, images: Sequence[np.ndarray], input_size: int, tta_flip: bool = False,
                   batch_size: int = 32) -> np.ndarray:
    """Probabilities of a bundle-style model for uint8 HxWx3 images of any size (see module doc)."""
    classes = int(model.output_shape[-1])
    if len(images) == 0:
        return np.zeros((0, classes), dtype=np.float32)
    layer = resize_layer(input_size)
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = resize_images(images[start:start + batch_size], input_size, layer)
        probabilities = np.asarray(model(batch, training=False))
        if tta_flip:
            probabilities = (probabilities + np.asarray(model(batch[:, :, ::-1, :], training=False))) / 2
        outputs.append(probabilities)
    return np.concatenate(outputs).astype(np.float32)


def save_bundle(run_dir: str | os.PathLike, model, metadata: dict | BundleMetadata) -> Path:
    """Write ``run_dir/model.keras`` then ``run_dir/bundle.json``, each atomically; returns run_dir.

    `metadata` is a `BundleMetadata` or a dict of its fields (class_names, input_size, backbone,
    weights_source, metrics and config required; versions filled in when absent). bundle.json
    is written last, so its presence means the model beside it is complete.
    """
    run_dir = Path(run_dir)
    if not isinstance(metadata, BundleMetadata):
        metadata = BundleMetadata.from_dict(dict(metadata), "bundle metadata")
    classes = int(model.output_shape[-1])
    if classes != len(metadata.class_names):
        raise BundleError(f"model has {classes} outputs but metadata names {len(metadata.class_names)} classes")
    run_dir.mkdir(parents=True, exist_ok=True)
    # Keras insists on the .keras suffix, so the temporary name keeps it.
    descriptor, temporary = tempfile.mkstemp(prefix=f".{MODEL_NAME}.", suffix=".part.keras", dir=run_dir)
    os.fchmod(descriptor, 0o666 & ~current_umask())  # mkstemp's 0600 would make the model private
    os.close(descriptor)
    try:
        model.save(temporary)
        os.replace(temporary, run_dir / MODEL_NAME)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    atomic_write_json(run_dir / BUNDLE_NAME, metadata.to_dict())
    return run_dir


class IncompleteRunError(DetcropError):
    """A run folder that training is writing, or that a killed or cancelled training left behind."""


def mark_incomplete(run_dir: str | os.PathLike) -> None:
    """Mark `run_dir` as being written; done before anything else of a new training lands there.

    Retraining into an existing run replaces config.json, history and reports long before the
    new bundle; while the marker is there, `read_bundle_metadata` refuses the folder, so an old
    bundle is never served under a new config.
    """
    atomic_write_json(Path(run_dir) / INCOMPLETE_NAME, {
        "reason": "detcrop train is writing this run, or was killed or cancelled before it finished"})


def mark_complete(run_dir: str | os.PathLike) -> None:
    """Remove the marker; called once the new bundle is atomically in place."""
    (Path(run_dir) / INCOMPLETE_NAME).unlink(missing_ok=True)


def read_bundle_metadata(run_dir: str | os.PathLike) -> BundleMetadata:
    """The validated ``bundle.json`` of `run_dir` (no TensorFlow needed)."""
    run_dir = Path(run_dir)
    path = run_dir / BUNDLE_NAME
    if not run_dir.is_dir():
        raise MissingFileError(f"{run_dir}: run folder not found (expected a folder with {MODEL_NAME} and {BUNDLE_NAME})")
    if (run_dir / INCOMPLETE_NAME).exists():
        raise IncompleteRunError(
            f"{run_dir}: incomplete run ({INCOMPLETE_NAME} is present): training into it is running, or was "
            "killed or cancelled before the new bundle was written; rerun `detcrop train` into it to finish it")
    if not path.is_file():
        raise MissingFileError(f"{path}: bundle metadata not found; is {run_dir} a finished `detcrop train` run?")
    return BundleMetadata.from_dict(read_json_object(path, "bundle metadata"), path)


def bundle_model_path(run_dir: str | os.PathLike) -> Path:
    """``run_dir/model.keras``, checked to be there beside a valid ``bundle.json`` (`read_bundle_metadata`'s checks)."""
    model_path = Path(run_dir) / MODEL_NAME
    if not model_path.is_file():
        raise MissingFileError(f"{model_path}: model file not found beside {BUNDLE_NAME}")
    return model_path


def load_bundle(run_dir: str | os.PathLike) -> Bundle:
    """Load ``run_dir/model.keras`` and ``run_dir/bundle.json`` into a `Bundle`.

    >>> bundle = load_bundle("runs/watches")  # doctest: +SKIP
    >>> bundle.class_names[bundle.predict([image]).argmax()]  # doctest: +SKIP
    'rolex'
    """
    import keras

    metadata = read_bundle_metadata(run_dir)
    model_path = bundle_model_path(run_dir)
    from detcrop.classify.backbones import register_bundle_layers

    register_bundle_layers(metadata.backbone)  # keras-hub layers are found by their registered names
    try:
        model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises ValueError, TypeError, zipfile and h5py errors alike
        # Nothing in the file ran: safe_mode refuses code before it could; say so in one line.
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise BundleError(f"{model_path}: this run's model cannot be loaded safely: {type(error).__name__}: "
                          f"{reason}") from None
    if int(model.output_shape[-1]) != len(metadata.class_names):
        raise BundleError(f"{model_path}: model has {model.output_shape[-1]} outputs but {BUNDLE_NAME} names "
                          f"{len(metadata.class_names)} classes")
    return Bundle(model=model, metadata=metadata, class_names=metadata.class_names, input_size=metadata.input_size)

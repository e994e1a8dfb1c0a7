"""Frozen-base features, computed once per image and cached on disk.

A frozen base's output never changes, so the head trains on pooled feature vectors instead
of re-running the base every epoch. One ``.npy`` per image and variant lives in
``CACHE/<backbone>-<size>px-<digest>/<image sha256>[.flip].npy``, where the digest covers
the backbone, the input size, the weights source (pip package version, file content hash,
random seed) and the resize method: changing any of them starts a fresh folder and never
reuses stale features.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from detcrop.data.atomic import atomic_write_bytes, atomic_write_json
from detcrop.data.cache import cache_dir
from detcrop.data.images import ImageError, file_sha256, load_image_array
from detcrop.data.packages import distribution_version

logger = logging.getLogger(__name__)

#: Bumped when the way features are computed changes (invalidates every cache folder).
FEATURE_VERSION = 1
#: Variants cached per image: the image and its mirror (flip augmentation and flip TTA).
VARIANTS = ("orig", "flip")


def check_variant(variant: str) -> None:
    """A ValueError for a variant name other than `VARIANTS`."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown feature variant {variant!r}; expected one of {VARIANTS}")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/detcrop/features``, else ``~/.cache/detcrop/features``."""
    return cache_dir("features")


class ArrayCache:
    """Arrays keyed by image content hash, in a folder named by everything that produced them.

    Layout: ``ROOT/<name>-<digest>/<image sha256>[.<variant>].npy``, where the digest hashes
    `identity` (backbone, size, weights source, ...), so a change in any of them is a new folder.
    """

    kind = "cached arrays"  # said in the warning about an unreadable file

    def __init__(self, root: str | os.PathLike, name: str, identity: dict, dtype: np.dtype | type):
        self.identity = identity
        self.dtype = np.dtype(dtype)
        digest = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = Path(root) / f"{name}-{digest}"
        self.folder.mkdir(parents=True, exist_ok=True)
        identity_path = self.folder / "identity.json"
        if not identity_path.exists():
            atomic_write_json(identity_path, self.identity)

    def path(self, sha256: str, variant: str = "orig") -> Path:
        return self.folder / (f"{sha256}.npy" if variant == "orig" else f"{sha256}.{variant}.npy")

    def get(self, sha256: str, variant: str = "orig", shape: tuple[int, ...] | None = None) -> np.ndarray | None:
        """The cached array, or None: missing, or not what this cache writes (a miss, with one warning
        naming the file). `shape`: the shape every entry must have, when the caller knows it."""
        path = self.path(sha256, variant)
        try:
            array = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            logger.warning("%s: unreadable %s (%s); recomputing", path, self.kind, error)
            return None
        problem = self._problem(array, shape)
        if problem:
            logger.warning("%s: bad %s (%s); recomputing", path, self.kind, problem)
            return None
        return array

    def _problem(self, array: np.ndarray, shape: tuple[int, ...] | None) -> str | None:
        """Why a loaded entry cannot be used (a half-written, foreign or corrupted file), else None."""
        if array.dtype != self.dtype:
            return f"dtype {array.dtype}, expected {self.dtype}"
        if shape is not None and tuple(array.shape) != tuple(shape):
            return f"shape {tuple(array.shape)}, expected {tuple(shape)}"
        if not np.isfinite(array).all():
            return "non-finite values"
        return None

    def put(self, sha256: str, variant: str, array: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(array, dtype=self.dtype), allow_pickle=False)
        atomic_write_bytes(self.path(sha256, variant), buffer.getvalue())

    def _unreadable_path(self, sha256: str) -> Path:
        return self.folder / f"{sha256}.unreadable.json"

    def unreadable(self, sha256: str) -> str | None:
        """Why these bytes could not be decoded, when this version of detcrop already tried; else None."""
        try:
            record = json.loads(self._unreadable_path(sha256).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("detcrop") != distribution_version("detcrop"):
            return None  # another version may read them (a new format, other limits): try again
        reason = record.get("reason")
        return reason if isinstance(reason, str) else None

    def put_unreadable(self, sha256: str, reason: str) -> None:
        """Remember that the image with content `sha256` failed to decode (a message, never code)."""
        atomic_write_json(self._unreadable_path(sha256),
                          {"reason": reason, "detcrop": distribution_version("detcrop")})


class FeatureCache(ArrayCache):
    """Pooled feature vectors of one (backbone, input size, weights source) on disk."""

    kind = "cached features"

    def __init__(self, root: str | os.PathLike, backbone: str, input_size: int, weights_source: str):
        super().__init__(root, f"{backbone}-{int(input_size)}px", {
            "backbone": backbone,
            "input_size": int(input_size),
            "weights_source": weights_source,
            "resize": "keras.layers.Resizing bilinear antialias",
            "pooling": "global-average",
            "feature_version": FEATURE_VERSION,
        }, np.float32)


@dataclass
class FeatureResult:
    """Features per variant for the images that loaded; `kept[i]` indexes the input list."""

    features: dict[str, np.ndarray]  # variant -> (len(kept), channels) float32
    kept: list[int]  # indices of the input paths that have features
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unreadable images
    computed: int = 0  # images run through the base in this call
    cached: int = 0  # images whose features came from the cache


def build_feature_model(backbone: str, input_size: int, weights=None, seed: int = 0):
    """(keras.Model: (S, S, 3) pixels 0..255 -> pooled features, weights_source, base, preprocessing layers)."""
    import keras

    from detcrop.classify.backbones import build_base, get_backbone

    base, source = build_base(backbone, input_size, weights, seed)
    base.trainable = False
    preprocessing = get_backbone(backbone).build_preprocessing()
    inputs = keras.Input((input_size, input_size, 3), name="pixels")
    x = inputs
    for layer in preprocessing:
        x = layer(x)
    x = base(x, training=False)
    outputs = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, outputs, name=f"{backbone}_features"), source, base, preprocessing


#: What a feature pass yields per image: (position in the list it was given, features per variant
#: or the reason the image could not be read).
FeatureOutcome = tuple[int, "dict[str, np.ndarray] | str"]


def variant_features(feature_model, images: Sequence[np.ndarray], input_size: int, variants: Sequence[str],
                     layer=None) -> dict[str, np.ndarray]:
    """Outputs of decoded images per variant: resized as bundles resize; "flip" on the mirrored batch."""
    from detcrop.classify.bundle import resize_images

    batch = resize_images(images, input_size, layer)
    outputs = {}
    for variant in variants:
        check_variant(variant)
        outputs[variant] = np.asarray(feature_model(batch[:, :, ::-1, :] if variant == "flip" else batch,
                                                    training=False))
    return outputs


def compiled_forward(model):
    """A Keras model's inference forward as one `tf.function`; any other callable (ONNX Runtime) as it is.

    Traced once, a convnet runs faster on CPU than called eagerly, with the same outputs up to
    float rounding (chosen by measurement: benchmarks/RESULTS.md#pooled-features).
    """
    import keras

    if not isinstance(model, keras.Model):
        return model
    import tensorflow as tf

    forward = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True)
    return lambda batch, training=False: forward(batch)


class LocalFeaturePass:
    """The feature pass in this process: `batch_size` images per forward pass of `feature_model`.

    Called with image paths and variants, it yields a `FeatureOutcome` per path; `extract_features`
    owns the cache around it (so does the Ray pass, `classify.ray_features.RayFeaturePass`).
    """

    def __init__(self, feature_model, input_size: int, batch_size: int = 32):
        self.feature_model = compiled_forward(feature_model)
        self.input_size = int(input_size)
        self.batch_size = int(batch_size)

    def __call__(self, paths: Sequence[str | os.PathLike], variants: Sequence[str]) -> Iterator[FeatureOutcome]:
        from detcrop.classify.bundle import resize_layer

        layer = resize_layer(self.input_size)
        for start in range(0, len(paths), self.batch_size):
            images, positions = [], []
            for position in range(start, min(start + self.batch_size, len(paths))):
                try:
                    images.append(load_image_array(paths[position]))
                    positions.append(position)
                except ImageError as error:
                    yield position, error.reason
            if images:
                outputs = variant_features(self.feature_model, images, self.input_size, variants, layer)
                for row, position in enumerate(positions):
                    yield position, {variant: outputs[variant][row] for variant in variants}


def extract_features(
    paths: Sequence[str | os.PathLike],
    sha256s: Sequence[str],
    feature_model,
    cache: FeatureCache,
    input_size: int,
    variants: Sequence[str] = ("orig",),
    batch_size: int = 32,
    progress: bool = True,
    feature_pass: Callable[[list, Sequence[str]], Iterable[FeatureOutcome]] | None = None,
) -> FeatureResult:
    """Features of every image in `paths` per variant, from the cache or computed and cached.

    Only the images without cached features go to `feature_pass` (default: a `LocalFeaturePass`
    of `feature_model`); what it computes is cached as it arrives, so an interrupted pass resumes.
    Images that fail to load are skipped and reported in `FeatureResult.skipped`. When the file
    still holds the bytes of `sha256s` after failing, the failure is theirs: the cache remembers
    it (`ArrayCache.put_unreadable`), so a rerun reports it again without starting a pass (for
    the Ray pass, a Ray start-up) only to fail on it.
    """
    for variant in variants:
        check_variant(variant)  # raises for an unknown name, before any work
    if len(paths) != len(sha256s):
        raise ValueError(f"{len(paths)} paths but {len(sha256s)} hashes")
    found: dict[int, dict[str, np.ndarray]] = {}
    missing: list[int] = []
    known_unreadable: list[tuple[str, str]] = []
    # Every entry of one cache folder has the model's output shape (the batch axis dropped).
    shape = _entry_shape(feature_model)
    for index, sha256 in enumerate(sha256s):
        vectors = {variant: cache.get(sha256, variant, shape) for variant in variants}
        if all(vector is not None for vector in vectors.values()):
            found[index] = vectors
        elif (reason := cache.unreadable(sha256)) is not None:
            known_unreadable.append((str(paths[index]), reason))
        else:
            missing.append(index)
    result = FeatureResult(features={}, kept=[], cached=len(found), skipped=known_unreadable)
    for path, reason in known_unreadable:
        logger.warning("skipping %s: %s (as in an earlier pass over these bytes)", path, reason)
    if missing:
        logger.info("computing %s features for %d images (%d cached) into %s",
                    cache.identity["backbone"], len(missing), len(found), cache.folder)
        feature_pass = feature_pass or LocalFeaturePass(feature_model, input_size, batch_size)
        backbone = cache.identity.get("backbone")
        bar = tqdm(total=len(paths), initial=len(found), desc=f"features {backbone}" if backbone else "features",
                   unit="img", disable=not progress)
        bar.set_postfix(computed=0, cached=result.cached, refresh=False)
        for position, outcome in feature_pass([paths[index] for index in missing], variants):
            index = missing[position]
            if isinstance(outcome, str):
                result.skipped.append((str(paths[index]), outcome))
                logger.warning("skipping %s: %s", paths[index], outcome)
                if _holds(paths[index], sha256s[index]):  # not a file that vanished or changed meanwhile
                    cache.put_unreadable(sha256s[index], outcome)
            else:
                found[index] = {variant: outcome[variant] for variant in variants}
                for variant in variants:
                    cache.put(sha256s[index], variant, outcome[variant])
                result.computed += 1
            bar.set_postfix(computed=result.computed, cached=result.cached, refresh=False)
            bar.update(1)
        bar.close()
    result.kept = sorted(found)
    for variant in variants:
        if result.kept:
            result.features[variant] = np.stack([found[index][variant] for index in result.kept]).astype(np.float32)
        else:
            result.features[variant] = np.zeros((0, int(feature_model.output_shape[-1])), dtype=np.float32)
    return result


def _entry_shape(feature_model) -> tuple[int, ...] | None:
    """The shape of one image's output of `feature_model`, when it says so completely."""
    output_shape = getattr(feature_model, "output_shape", None)
    if not output_shape or any(size is None for size in output_shape[1:]):
        return None
    return tuple(int(size) for size in output_shape[1:])


def _holds(path: str | os.PathLike, sha256: str) -> bool:
    """Whether `path` is a file whose content hashes to `sha256` now."""
    try:
        return file_sha256(path) == sha256
    except (OSError, ValueError):
        return False

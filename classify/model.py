"""The models a run trains and composes: the frozen base behind its feature cache, the head, the classifier."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from detcrop.classify.config import TrainConfig
from detcrop.classify.examples import Examples


@dataclass
class FeatureExtractor:
    """The frozen base and what the feature pass needs around it."""

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


def build_head(feature_channels: int, classes: int, dropout: float, seed: int, hidden_units: int = 0,
               standardize: np.ndarray | None = None):
    """The head on pooled features: [standardize] + dropout + [dense ReLU + dropout] + dense softmax.

    Global average pooling happens before the feature cache, so the head starts from vectors.
    `standardize`: training features ([N, feature_channels]) whose per-dimension mean and spread
    the head first takes away (a `Rescaling`, which the ONNX export converts; a `Normalization`
    layer's statistics would become graph inputs there). Hidden layer: RESULTS.md#hidden-units.
    """
    import keras

    inputs = keras.Input((feature_channels,), name="features")
    x = inputs
    if standardize is not None:
        mean, spread = standardize.mean(axis=0), np.maximum(standardize.std(axis=0), 1e-6)
        x = keras.layers.Rescaling((1.0 / spread).tolist(), offset=(-mean / spread).tolist(), name="head_standardize")(x)
    x = keras.layers.Dropout(dropout, seed=seed, name="head_dropout")(x)
    if hidden_units:
        x = keras.layers.Dense(hidden_units, activation="relu", name="head_hidden",
                               kernel_initializer=keras.initializers.GlorotUniform(seed=seed))(x)
        x = keras.layers.Dropout(dropout, seed=seed + 1, name="head_hidden_dropout")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="head_dense",
                                 kernel_initializer=keras.initializers.GlorotUniform(seed=seed))(x)
    return keras.Model(inputs, outputs, name="head")


def head_val_accuracy(head, examples: Examples, features: dict[str, np.ndarray]) -> float:
    """Accuracy of the frozen-feature `head` on the val split (no flip TTA): the bar fine-tuning must beat."""
    predicted = np.asarray(head(features["orig"][examples.val], training=False)).argmax(1)
    return float((predicted == examples.labels[examples.val]).mean())


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
    # call says. BatchNorm stays in inference mode when fine-tuning because the strategies freeze it.
    x = base(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = head(x)
    return keras.Model(inputs, outputs, name="classifier")

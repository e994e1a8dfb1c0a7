"""The baseline's CNNs (one per recipe) and the serving wrapper that puts resizing and grayscale in the graph."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from detcrop.classify.baseline.recipes import RECIPES
from detcrop.data.config import ConfigError

if TYPE_CHECKING:  # TensorFlow loads only when a model is built
    import keras

#: Luma weights of ITU-R 601 (Pillow's RGB -> "L"), used to feed RGB photos to grayscale models.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
#: Parameters of the seed CNN at 32x32x3 with 10 classes (the tutorial's figure).
SEED_PARAMS_CIFAR10 = 122_570


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
    convolutions and dropout around the hidden Dense layer. Batch norm lets a larger learning
    rate and larger batches train it in fewer epochs; it is left out after the first
    convolution, where on a CPU it would cost more time than the convolution itself
    (RESULTS.md#baseline).
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


"""The tiny bundle model the pipeline tests save: pixels -> resize to 16 px -> mean colour -> 2 classes."""

from __future__ import annotations

import keras

from detcrop.classify.bundle import RESIZE_LAYER_NAME


def tiny_model() -> keras.Model:
    """Resize (the bundle's named resize layer) to 16 px, scale to [0, 1], average, Dense(2) softmax; seed 0."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Resizing(16, 16, antialias=True, name=RESIZE_LAYER_NAME)(inputs)
    x = keras.layers.Rescaling(1 / 255.0)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    return keras.Model(inputs, outputs)

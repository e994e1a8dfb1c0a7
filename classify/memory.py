"""A nearest-neighbour memory beside the head: every labelled image votes by its likeness.

The head generalises from the training images; a memory remembers them. Listing photos of
one brand repeat their models (one design photographed by many sellers), so a new photo's
closest training images may say a lot about its brand. The memory holds the pooled features of
the labelled images, L2-normalised; a photo's features are compared with each (cosine
similarity), and the softmax of the similarities over `temperature` weighs the votes of their
labels. The bundle's answer is a blend of the two::

    p = (1 - blend) * head(f) + blend * softmax(cos(f, memory) / temperature) @ one_hot(labels)

Both parts are plain Keras layers with frozen weights (`UnitNormalization`, `Dense`,
`Softmax`, `Rescaling`, `Add`), so the bundle stays one `.keras` model that loads in safe
mode and exports to ONNX like any other. Each image costs one (features x memory) product:
about 3 million multiply-adds for 2,500 images of 1,280 features.

On watches-brands' val split (README), blending at 0.5 with temperature 0.02 added 0.004-0.022
val macro F1 to single partially fine-tuned models and 0.013-0.018 to the default's two-member
ensemble, but nothing on the held-back photos (0.803 / 0.801 macro F1 in two runs of the default
with it, against 0.802-0.812 without): it is an option (`--memory-blend 0.5`), off by default.
"""

from __future__ import annotations

import numpy as np


def _unit_rows(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def memory_probabilities(queries: np.ndarray, memory: np.ndarray, memory_labels: np.ndarray, classes: int,
                         temperature: float) -> np.ndarray:
    """(len(queries), classes): each query's label votes from `memory`, weighted by softmax(cosine / temperature).

    The numpy twin of the memory in `blend_with_memory`'s model (what `train` measures on val with
    the train rows as memory; the bundle's memory adds the val rows when the member was refit).
    """
    similarity = _unit_rows(np.asarray(queries, np.float64)) @ _unit_rows(np.asarray(memory, np.float64)).T
    weights = np.exp((similarity - similarity.max(axis=1, keepdims=True)) / temperature)
    weights /= weights.sum(axis=1, keepdims=True)
    return (weights @ np.eye(classes)[memory_labels]).astype(np.float32)


def blend_probabilities(head_probabilities: np.ndarray, memory_probs: np.ndarray, blend: float) -> np.ndarray:
    return ((1.0 - blend) * head_probabilities + blend * memory_probs).astype(np.float32)


def blend_with_memory(head, memory: np.ndarray, memory_labels: np.ndarray, classes: int, temperature: float,
                      blend: float):
    """features -> the blend of `head` and the memory of `memory` (rows of pooled features) labelled `memory_labels`.

    A Keras model that takes the head's place in the composed classifier (`compose_model`).
    """
    import keras

    memory = np.asarray(memory, np.float32)
    if memory.ndim != 2 or len(memory) != len(memory_labels) or not len(memory):
        raise ValueError(f"memory: expected (rows, features) with one label per row, got {memory.shape} and "
                         f"{len(memory_labels)} labels")
    inputs = keras.Input((memory.shape[1],), name="features")
    from_head = head(inputs)
    unit = keras.layers.UnitNormalization(axis=-1, name="memory_unit")(inputs)
    similarity = keras.layers.Dense(len(memory), use_bias=False, trainable=False, kernel_initializer="zeros",
                                    name="memory_similarity")  # its weights are set below: no random draw
    weights = keras.layers.Softmax(name="memory_weights")(similarity(unit))
    votes = keras.layers.Dense(classes, use_bias=False, trainable=False, kernel_initializer="zeros",
                               name="memory_votes")
    from_memory = votes(weights)
    # Cosine similarity over the temperature, as one product: the memory's unit rows scaled by 1 / temperature.
    similarity.set_weights([(_unit_rows(memory) / temperature).T.astype(np.float32)])
    votes.set_weights([np.eye(classes, dtype=np.float32)[memory_labels]])
    outputs = keras.layers.Add(name="memory_blend")([
        keras.layers.Rescaling(1.0 - blend, name="head_share")(from_head),
        keras.layers.Rescaling(blend, name="memory_share")(from_memory)])
    return keras.Model(inputs, outputs, name="head_and_memory")

"""train's frozen-base feature pass on Ray Data (`detcrop train --engine ray`).

The Ray docs' offline batch inference shape, as the crop job's (`detect.ray_engine`): the images
without cached features are read as bytes (`read_binary_files`), an actor pool holds one
backbone per worker (`map_batches` with a callable class, `ActorPoolStrategy`), and each actor
decodes, resizes and runs the feature model exactly as the local pass does. The model travels
once through the object store: the converted ONNX file with `--runtime onnx` (workers then need
no TensorFlow graph of their own), else the feature model's weights, loaded into the same
architecture rebuilt in each actor. The driver caches every vector as it arrives, in the same
`FeatureCache` entries the local pass fills (`classify.features.extract_features` owns the
cache around both passes), so the rest of training is unchanged and a later local run finds them.
"""

from __future__ import annotations

import io
import os
from typing import Iterator, Sequence

import numpy as np

from detcrop.classify.features import FeatureOutcome, variant_features
from detcrop.data.images import ImageError, decode_image_array
from detcrop.data.ray_runtime import (
    RaySettings, import_ray, map_with_actors, path_key, ray_session, read_files, shared_value,
    single_thread_tensorflow,
)


def _weights_bytes(model) -> bytes:
    """The model's weights as one .npz payload (arrays only: the actors load it without pickle)."""
    buffer = io.BytesIO()
    np.savez(buffer, *model.get_weights())
    return buffer.getvalue()


class FeatureActor:
    """One feature model per Ray worker; `__call__` turns a batch of image bytes into feature rows."""

    def __init__(self, backbone: str, input_size: int, seed: int, variants: tuple, shape: tuple,
                 onnx_model=None, weights=None, train_from: str = ""):
        from detcrop.classify.bundle import resize_layer

        self.input_size, self.variants, self.shape = int(input_size), tuple(variants), tuple(shape)
        onnx_model, weights = shared_value(onnx_model), shared_value(weights)
        if onnx_model is not None:
            from detcrop.classify.onnx_runtime import OnnxClassifier

            # One intra-op thread per actor: Ray scales by actors, one per CPU.
            self.model = OnnxClassifier(onnx_model, self.shape[-1], threads=1)
        else:
            single_thread_tensorflow()
            from detcrop.classify.features import build_feature_model

            # The driver's architecture, randomly initialised, then given the driver's weights: no
            # download or weights file is needed on the worker, and the features are the driver's.
            self.model, _, base, preprocessing = build_feature_model(backbone, self.input_size, "none", seed)
            if train_from:  # the maps at the cut of partial fine-tuning, as the driver's pass makes them
                from detcrop.classify.strategies.partial import activation_model

                self.model = activation_model(base, preprocessing, train_from, self.input_size)[0]
            with np.load(io.BytesIO(weights), allow_pickle=False) as arrays:
                self.model.set_weights([arrays[f"arr_{index}"] for index in range(len(arrays.files))])
        self.layer = resize_layer(self.input_size)

    def __call__(self, batch: dict) -> dict:
        images, rows, errors = [], [], []
        for row, (payload, path) in enumerate(zip(batch["bytes"], batch["path"])):
            try:
                images.append(decode_image_array(bytes(payload), name=path))
                rows.append(row)
                errors.append("")
            except ImageError as error:
                errors.append(error.reason)
        columns = {"path": np.asarray(batch["path"]), "error": np.asarray(errors, dtype=object)}
        outputs = variant_features(self.model, images, self.input_size, self.variants, self.layer) if images else {}
        for variant in self.variants:
            column = np.zeros((len(errors), *self.shape), dtype=np.float32)
            if images:
                column[rows] = outputs[variant]
            columns[variant] = column
        return columns


class RayFeaturePass:
    """A feature pass for `extract_features(..., feature_pass=...)` on `settings.workers` Ray actors.

    `feature_model` is the driver's Keras feature model (`features.build_feature_model`), or with
    `train_from` its activation model at that cut (`strategies.partial.activation_model`); with
    `runtime="onnx"` it is converted once on the driver when there is something to compute.
    """

    def __init__(self, feature_model, backbone: str, input_size: int, seed: int, runtime: str = "tensorflow",
                 settings: RaySettings = RaySettings(), batch_size: int = 32, train_from: str = ""):
        import_ray()  # before any work: without the extra, say how to install it
        self.feature_model = feature_model
        self.backbone, self.input_size, self.seed = backbone, int(input_size), int(seed)
        self.runtime, self.settings, self.batch_size = runtime, settings, int(batch_size)
        self.train_from = train_from

    def _model_payload(self) -> dict:
        if self.runtime == "onnx":
            from detcrop.classify.export import keras_to_onnx_bytes

            return {"onnx_model": keras_to_onnx_bytes(self.feature_model, self.input_size)}
        return {"weights": _weights_bytes(self.feature_model)}

    def __call__(self, paths: Sequence[str | os.PathLike], variants: Sequence[str]) -> Iterator[FeatureOutcome]:
        positions: dict[str, list[int]] = {}  # a path listed twice is read once
        for position, path in enumerate(paths):
            positions.setdefault(path_key(os.path.abspath(path)), []).append(position)
        read_paths = list(positions)
        # Enough batches for every actor, at most `batch_size` images per forward pass.
        batch_size = max(1, min(self.batch_size, -(-len(read_paths) // self.settings.workers)))
        with ray_session(self.settings) as ray:
            features = map_with_actors(
                ray, read_files(ray, read_paths, self.settings.workers), FeatureActor, self.settings, batch_size, backbone=self.backbone,
                input_size=self.input_size, seed=self.seed, variants=tuple(variants),
                shape=tuple(int(size) for size in self.feature_model.output_shape[1:]), train_from=self.train_from,
                **self._model_payload())
            for batch in features.iter_batches(batch_size=None, batch_format="numpy"):
                for row, (path, error) in enumerate(zip(batch["path"], batch["error"])):
                    outcome = error or {variant: batch[variant][row] for variant in variants}
                    for position in positions[path_key(path)]:
                        yield position, outcome


__all__ = ["FeatureActor", "RayFeaturePass"]

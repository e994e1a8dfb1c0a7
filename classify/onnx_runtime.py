"""Classifier and backbone run by ONNX Runtime (`predict --runtime onnx`, `train --runtime onnx`).

The classifier after its resize layer is converted once by tf2onnx (`export.onnx_classifier_bytes`)
and cached under `~/.cache/detcrop/onnx/`, named by the content hash of the run's model.keras
and used only when its sidecar vouches for it (`data.cache.cached_file`).
`load_onnx_bundle` returns the run's `Bundle` with an `OnnxClassifier` for its model, which
`bundle.predict_images` calls exactly like the Keras model (on already resized batches).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from detcrop.data.cache import cache_dir, cached_file
from detcrop.data.images import file_sha256
from detcrop.data.progress import status_line

logger = logging.getLogger(__name__)


class OnnxClassifier:
    """Called like the bundle's Keras model on resized float32 batches [batch, S, S, 3] of raw pixels."""

    def __init__(self, model: str | os.PathLike | bytes, classes: int, threads: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                                     providers=["CPUExecutionProvider"])
        self._input_name = self._session.get_inputs()[0].name
        outputs = self._session.get_outputs()[0].shape[-1]
        if isinstance(outputs, int) and outputs != int(classes):
            raise ValueError(f"the ONNX model has {outputs} outputs, expected {classes} classes")
        self.output_shape = (None, int(classes))

    def __call__(self, batch, training: bool = False) -> np.ndarray:
        return self._session.run(None, {self._input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]


def load_onnx_bundle(run_dir: str | os.PathLike, cache_root: str | os.PathLike | None = None,
                     threads: int | None = None):
    """The bundle in `run_dir` with its classifier run by ONNX Runtime (converted once, cached by model.keras's hash).

    The Keras model is loaded (``safe_mode``, as `load_bundle` does) only to convert it: a run
    whose conversion is cached starts without it. `threads`: ONNX Runtime's threads per call
    (None: all cores).
    """
    from detcrop.classify.bundle import Bundle, bundle_model_path, load_bundle, read_bundle_metadata
    from detcrop.classify.export import ONNX_OPSET, onnx_classifier_bytes

    metadata = read_bundle_metadata(run_dir)
    digest = file_sha256(bundle_model_path(run_dir))
    folder = Path(cache_root) if cache_root is not None else cache_dir("onnx")
    target = folder / f"classifier-opset{ONNX_OPSET}-{digest[:16]}.onnx"

    def convert() -> bytes:
        bundle = load_bundle(run_dir)
        logger.info("converting %s to ONNX (once; cached as %s)", run_dir, target)
        with status_line("converting the classifier to ONNX (once)"):
            return onnx_classifier_bytes(bundle)

    classifier = cached_file(target, digest, convert,
                             lambda path: OnnxClassifier(path, len(metadata.class_names), threads))
    return Bundle(model=classifier, metadata=metadata, class_names=metadata.class_names,
                  input_size=metadata.input_size)


class OnnxFeatureModel:
    """train's frozen feature model run by ONNX Runtime, called like the Keras model by `extract_features`.

    Converted by tf2onnx on the first call, so a run whose features are all cached never
    converts. Its features equal TensorFlow's up to float rounding (tests/classify/test_onnx_features.py),
    so both runtimes share one feature cache.
    """

    def __init__(self, keras_model, input_size: int):
        self._keras_model = keras_model
        self._input_size = int(input_size)
        self._session = None
        self.output_shape = tuple(keras_model.output_shape)

    def __call__(self, batch, training: bool = False) -> np.ndarray:
        if self._session is None:
            from detcrop.classify.export import keras_to_onnx_bytes

            self._session = OnnxClassifier(keras_to_onnx_bytes(self._keras_model, self._input_size),
                                           int(self.output_shape[-1]))
        return self._session(batch)


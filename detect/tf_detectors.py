"""TensorFlow detector adapters; the only place where TF outputs become `Detections`.

Both adapters speak the TF Object Detection API contract: uint8 `[1, H, W, 3]` in;
`detection_boxes` (normalised ymin, xmin, ymax, xmax), `detection_scores`,
`detection_classes` (COCO 90-id) and `num_detections` out.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import tensorflow as tf

from detcrop.detect.base import (
    FASTER_RCNN_DIR_ENV, FASTER_RCNN_HANDLE, DetectorLoadError, DetectorNotFoundError, check_image,
)
from detcrop.detect.detections import Detections
from detcrop.detect.labels import coco_labels

logger = logging.getLogger(__name__)

_OUTPUT_KEYS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


class _TFDetector:
    """Shared by the adapters: `_call` takes a uint8 [1, H, W, 3] tensor and returns the TF Hub
    object-detection outputs, which become `Detections` here and nowhere else."""

    def __init__(self, name: str, label_map: Mapping[int, str] | None):
        self.name = name
        self.label_map = dict(label_map if label_map is not None else coco_labels())

    def detect(self, image: np.ndarray) -> Detections:
        """Detections in `image` (uint8 RGB, (height, width, 3))."""
        image = check_image(image)
        outputs = self._call(tf.convert_to_tensor(image[np.newaxis]))
        height, width = image.shape[:2]
        return Detections.from_tensorflow(outputs, (width, height), self.label_map)


class FrozenGraphDetector(_TFDetector):
    """A TF1 frozen inference graph (`image_tensor:0` in, `detection_*:0` out), run as a TF2 function."""

    def __init__(self, graph_path: str | os.PathLike, name: str, label_map: Mapping[int, str] | None = None):
        super().__init__(name, label_map)
        graph_path = Path(graph_path)
        graph_def = tf.compat.v1.GraphDef()
        try:
            graph_def.ParseFromString(graph_path.read_bytes())
        except OSError as error:
            raise DetectorNotFoundError(f"{graph_path}: cannot read frozen graph ({error})") from None
        except Exception as error:  # protobuf's DecodeError has no stable import path
            raise DetectorLoadError(f"{graph_path}: expected a TF frozen graph (GraphDef .pb), cannot parse it ({error})") \
                from None

        def import_graph() -> None:
            tf.compat.v1.import_graph_def(graph_def, name="")

        wrapped = tf.compat.v1.wrap_function(import_graph, [])
        try:
            inputs = wrapped.graph.as_graph_element("image_tensor:0")
            outputs = {key: wrapped.graph.as_graph_element(f"{key}:0") for key in _OUTPUT_KEYS}
        except (KeyError, ValueError) as error:
            raise DetectorLoadError(
                f"{graph_path}: expected a TF Object Detection API graph with image_tensor:0 and "
                f"{', '.join(key + ':0' for key in _OUTPUT_KEYS)}; {error}"
            ) from None
        self._call = wrapped.prune(inputs, outputs)
        logger.debug("loaded frozen graph %s", graph_path)


class SavedModelDetector(_TFDetector):
    """A TF Hub handle or SavedModel directory with the TF Hub object-detection signature."""

    def __init__(self, handle: str | os.PathLike, name: str, label_map: Mapping[int, str] | None = None):
        import tensorflow_hub as hub

        super().__init__(name, label_map)
        handle = os.fspath(handle)
        is_remote = "://" in handle
        if not is_remote and not (Path(handle) / "saved_model.pb").is_file():
            raise DetectorNotFoundError(
                f"{handle}: expected a SavedModel directory (with saved_model.pb and variables/), "
                f"found {'a folder without saved_model.pb' if Path(handle).is_dir() else 'nothing'}"
            )
        try:
            model = hub.load(handle)
        except Exception as error:  # hub raises network, HTTP and parse errors of many types
            if not is_remote:
                raise DetectorLoadError(f"{handle}: cannot load SavedModel ({type(error).__name__}: {error})") from None
            raise DetectorNotFoundError(
                f"cannot load TF Hub model {handle} ({type(error).__name__}: {error}). Without internet, "
                f"download it on another machine and either pass its SavedModel directory with "
                f"--detector PATH, set {FASTER_RCNN_DIR_ENV}=PATH (for {FASTER_RCNN_HANDLE}), or copy "
                f"a TF Hub cache there and set TFHUB_CACHE_DIR to it"
            ) from None
        if callable(model):
            self._call = model
        elif "serving_default" in getattr(model, "signatures", {}):
            signature = model.signatures["serving_default"]
            input_name = next(iter(signature.structured_input_signature[1]))
            self._call = lambda images: signature(**{input_name: images})
        else:
            raise DetectorLoadError(f"{handle}: SavedModel is neither callable nor has a serving_default signature")
        self._model = model  # keeps the restored variables alive
        logger.debug("loaded SavedModel %s", handle)

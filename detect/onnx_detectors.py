"""ONNX Runtime detectors: a converted TF1 SSD frozen graph, or any ONNX file with the TF OD API outputs.

Converting the SSD frozen graph whole (tf2onnx) keeps its TF1 while-loops around non-max
suppression, and ONNX Runtime runs those slower than TensorFlow does. So the graph is split:

- ONNX Runtime runs resize (bilinear, TF1 `align_corners=False`), normalisation, MobileNet V2,
  the box predictors and the anchor decoding: uint8 `[1, H, W, 3]` in, decoded normalised
  boxes `[1, A, 4]` (ymin, xmin, ymax, xmax) and sigmoid scores `[1, A, C]` (background
  dropped) out;
- numpy runs the graph's own post-processing (`multiclass_nms`): per class, keep scores
  above the threshold, clip to the image, drop empty boxes, greedy NMS; then all classes
  sorted by score, the best `max_total` kept. Its settings are read from the frozen graph
  at conversion time and stored in the ONNX file's metadata (`detcrop.postprocess`).

The converted file is cached under `~/.cache/detcrop/onnx/` (`$XDG_CACHE_HOME/detcrop/onnx/` when set), named by
the frozen graph's content hash, so a changed graph never reuses a stale conversion.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from detcrop.data.cache import cache_dir, cached_file
from detcrop.data.errors import DetcropError
from detcrop.data.images import file_sha256
from detcrop.data.progress import status_line
from detcrop.detect.base import DetectorLoadError, check_image
from detcrop.detect.detections import Detections
from detcrop.detect.labels import coco_labels

logger = logging.getLogger(__name__)

#: Bumped when the split or the conversion changes (a new cache file name).
SPLIT_VERSION = 1
#: ONNX opset of converted graphs.
OPSET = 17
#: Metadata key holding the post-processing settings of a split graph.
POSTPROCESS_KEY = "detcrop.postprocess"
_OD_API_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes")

# Tensor names of the TF Object Detection API SSD export (2018 frozen graphs).
_RESIZED_IMAGES = "Preprocessor/map/TensorArrayStack/TensorArrayGatherV3:0"
_RESIZE_SIZE = "Preprocessor/map/while/ResizeImage/stack"
_DECODED_BOXES = "Postprocessor/Reshape_2"
_CLASS_SCORES = "Postprocessor/Slice"
_NMS_SCOPE = "Postprocessor/BatchMultiClassNonMaxSuppression/map/while/MultiClassNonMaxSuppression/"


class OnnxRuntimeMissingError(DetcropError, ImportError):
    """onnxruntime or tf2onnx is not installed."""


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise OnnxRuntimeMissingError(
            "--runtime onnx needs onnxruntime (and tf2onnx to convert TF models): "
            "pip install 'detcrop[export]'") from None
    return onnxruntime


@dataclass(frozen=True)
class NmsSettings:
    """The post-processing of a TF OD API SSD graph (`multiclass_non_max_suppression`)."""

    score_threshold: float  # per-class scores must be greater than this
    iou_threshold: float  # a box overlapping a better one of its class by more than this is dropped
    max_per_class: int
    max_total: int
    label_offset: int = 1  # score column 0 is COCO id 1 (the background column is dropped)


def multiclass_nms(boxes: np.ndarray, scores: np.ndarray, settings: NmsSettings) -> dict[str, np.ndarray]:
    """TF OD API outputs for one image from decoded boxes (A, 4) and class scores (A, C).

    Mirrors the frozen graph: strict `>` threshold, clip to [0, 1], drop boxes without area,
    greedy NMS per class (ties: lower index first, as TensorFlow's kernel), then every class
    together sorted by score (stable) and cut to `max_total`.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(boxes.shape[0], -1)
    kept_boxes, kept_scores, kept_classes = [], [], []
    candidates = scores > np.float32(settings.score_threshold)
    for class_index in np.flatnonzero(candidates.any(axis=0)):
        rows = np.flatnonzero(candidates[:, class_index])
        class_boxes = np.clip(boxes[rows], np.float32(0), np.float32(1))
        class_scores = scores[rows, class_index]
        areas = (class_boxes[:, 2] - class_boxes[:, 0]) * (class_boxes[:, 3] - class_boxes[:, 1])
        has_area = areas > 0
        class_boxes, class_scores = class_boxes[has_area], class_scores[has_area]
        selected = _greedy_nms(class_boxes, class_scores, settings.iou_threshold, settings.max_per_class)
        kept_boxes.append(class_boxes[selected])
        kept_scores.append(class_scores[selected])
        kept_classes.append(np.full(len(selected), class_index + settings.label_offset, np.float32))
    if not kept_boxes:
        return {"detection_boxes": np.zeros((0, 4), np.float32), "detection_scores": np.zeros(0, np.float32),
                "detection_classes": np.zeros(0, np.float32), "num_detections": np.zeros(1, np.float32)}
    all_boxes, all_scores, all_classes = (np.concatenate(parts) for parts in (kept_boxes, kept_scores, kept_classes))
    order = np.argsort(-all_scores, kind="stable")[:settings.max_total]
    return {"detection_boxes": all_boxes[order], "detection_scores": all_scores[order],
            "detection_classes": all_classes[order], "num_detections": np.array([len(order)], np.float32)}


def _greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_output: int) -> np.ndarray:
    """Indices kept by greedy NMS, best first (TensorFlow's NonMaxSuppressionV2 semantics)."""
    order = np.argsort(-scores, kind="stable")
    ymin = np.minimum(boxes[:, 0], boxes[:, 2])
    xmin = np.minimum(boxes[:, 1], boxes[:, 3])
    ymax = np.maximum(boxes[:, 0], boxes[:, 2])
    xmax = np.maximum(boxes[:, 1], boxes[:, 3])
    areas = (ymax - ymin) * (xmax - xmin)
    selected: list[int] = []
    suppressed = np.zeros(len(order), bool)
    for position, index in enumerate(order):
        if suppressed[position]:
            continue
        selected.append(int(index))
        if len(selected) == max_output:
            break
        rest = order[position + 1:]
        height = np.maximum(np.minimum(ymax[index], ymax[rest]) - np.maximum(ymin[index], ymin[rest]), 0)
        width = np.maximum(np.minimum(xmax[index], xmax[rest]) - np.maximum(xmin[index], xmin[rest]), 0)
        intersection = height * width
        union = areas[index] + areas[rest] - intersection
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where((areas[index] > 0) & (areas[rest] > 0), intersection / union, 0)
        suppressed[position + 1:] |= iou > iou_threshold
    return np.asarray(selected, np.int64)


# ---------------------------------------------------------------- conversion


def converted_ssd_path(graph_path: str | os.PathLike, cache_root: str | os.PathLike | None = None) -> Path:
    """The cached split ONNX conversion of the frozen SSD graph at `graph_path`, converting it if absent.

    The file is named by the graph's content hash and used only when its sidecar vouches for it
    (`data.cache.cached_file`: the graph's digest, and the file's own, recorded once it was whole);
    any other file there is converted again.
    """
    folder = Path(cache_root) if cache_root is not None else cache_dir("onnx")
    digest = file_sha256(graph_path)
    target = folder / f"ssd-split-v{SPLIT_VERSION}-{digest[:16]}.onnx"

    def convert() -> bytes:
        started = time.perf_counter()
        logger.info("converting %s to ONNX (once; cached as %s)", graph_path, target)
        with status_line("converting the detector to ONNX (once)"):
            payload = convert_ssd_graph(graph_path)
        logger.info("converted in %.1f s", time.perf_counter() - started)
        return payload

    # The entry's digest already proves it whole; `OnnxDetector` loads it once, where it is used.
    return cached_file(target, digest, convert, lambda path: path)


def _const_value(nodes: Mapping[str, object], name: str):
    from tensorflow.python.framework import tensor_util

    node = nodes.get(name)
    if node is None or node.op != "Const":
        raise KeyError(name)
    return tensor_util.MakeNdarray(node.attr["value"].tensor)


def read_nms_settings(graph_def) -> NmsSettings:
    """The NMS settings baked into a TF OD API SSD frozen graph (raises KeyError when absent)."""
    nodes = {node.name: node for node in graph_def.node}
    num_classes = sum(1 for name in nodes if name.startswith(_NMS_SCOPE) and name.endswith("/NonMaxSuppressionV2"))
    return NmsSettings(
        score_threshold=float(_const_value(nodes, _NMS_SCOPE + "FilterGreaterThan/Greater/y")),
        iou_threshold=float(_const_value(nodes, _NMS_SCOPE + "non_max_suppression/iou_threshold")),
        max_per_class=int(_const_value(nodes, _NMS_SCOPE + "Minimum/x")),
        max_total=int(_const_value(nodes, _NMS_SCOPE + f"Minimum_{num_classes}/x")),
    )


def convert_ssd_graph(graph_path: str | os.PathLike) -> bytes:
    """The serialized split ONNX model of a TF OD API SSD frozen graph (see the module doc)."""
    import tensorflow as tf

    try:
        import tf2onnx
    except ImportError:
        raise OnnxRuntimeMissingError("converting a frozen graph to ONNX needs tf2onnx: "
                                      "pip install 'detcrop[export]'") from None
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(Path(graph_path).read_bytes())
    except Exception as error:  # noqa: BLE001 - protobuf's DecodeError, or what a bad file raises in it
        raise DetectorLoadError(f"{graph_path}: not a TensorFlow frozen graph ({type(error).__name__}: {error})") \
            from None
    nodes = {node.name: node for node in graph_def.node}
    try:
        settings = read_nms_settings(graph_def)
        height, width = (int(side) for side in _const_value(nodes, _RESIZE_SIZE))
        for name in (_RESIZED_IMAGES.split(":")[0], _DECODED_BOXES, _CLASS_SCORES):
            if name not in nodes:
                raise KeyError(name)
    except KeyError as error:
        raise DetectorLoadError(
            f"{graph_path}: not a TF Object Detection API SSD graph that detcrop can split for ONNX Runtime "
            f"(no tensor {error}); use --runtime tensorflow, or convert it whole to an .onnx file with the "
            f"TF OD API outputs and pass that as --detector") from None
    with tf.Graph().as_default() as graph:
        pixels = tf.compat.v1.placeholder(tf.uint8, [1, None, None, 3], name="pixels")
        # The graph's own preprocessing: ToFloat, then ResizeBilinear without aligned corners.
        resized = tf.compat.v1.image.resize_bilinear(tf.cast(pixels, tf.float32), [height, width],
                                                     align_corners=False)
        tf.import_graph_def(graph_def, input_map={_RESIZED_IMAGES: resized}, name="ssd")
    outputs = [f"ssd/{_DECODED_BOXES}", f"ssd/{_CLASS_SCORES}"]
    sub_graph = tf.compat.v1.graph_util.extract_sub_graph(graph.as_graph_def(), outputs)
    model, _ = tf2onnx.convert.from_graph_def(sub_graph, input_names=["pixels:0"],
                                              output_names=[name + ":0" for name in outputs], opset=OPSET)
    entry = model.metadata_props.add()
    entry.key, entry.value = POSTPROCESS_KEY, json.dumps(asdict(settings))
    return model.SerializeToString()


# ---------------------------------------------------------------- the detector


def session_options(threads: int | None = None):
    """ONNX Runtime options: all graph optimisations, `threads` intra-op threads (default: all cores)."""
    onnxruntime = _import_onnxruntime()
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
    # Idle worker threads sleep instead of spinning: on a shared or oversubscribed machine
    # spinning threads steal the cores the other workers need.
    # chosen by measurement: benchmarks/RESULTS.md#runtime
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


class OnnxDetector:
    """A detector run by ONNX Runtime (CPU).

    The file either has the TF Object Detection API outputs (`detection_boxes`,
    `detection_scores`, `detection_classes`, optionally `num_detections`), or is a split SSD
    graph made by `convert_ssd_graph` (decoded boxes and class scores, NMS settings in its
    metadata). Input: one image tensor `[1, H, W, 3]`, uint8 (or float, then cast).
    """

    #: ONNX Runtime sessions run calls from several threads at once.
    concurrent = True

    def __init__(self, model: str | os.PathLike | bytes, name: str, label_map: Mapping[int, str] | None = None,
                 threads: int | None = None):
        onnxruntime = _import_onnxruntime()
        self.name = name
        self.label_map = dict(label_map if label_map is not None else coco_labels())
        # Bytes let a Ray driver ship the model through the object store to workers without its cache.
        self.model_path = Path(model) if not isinstance(model, bytes) else Path(f"<{len(model)} bytes of ONNX>")
        try:
            self._session = onnxruntime.InferenceSession(model if isinstance(model, bytes) else str(model),
                                                         session_options(threads),
                                                         providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
            raise DetectorLoadError(f"{self.model_path}: cannot load as an ONNX model ({type(error).__name__}: {error})") \
                from None
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise DetectorLoadError(f"{self.model_path}: expected one image input [1, H, W, 3], got "
                             f"{[(item.name, item.shape) for item in inputs]}")
        self._input_name = inputs[0].name
        self._input_dtype = np.uint8 if inputs[0].type == "tensor(uint8)" else np.float32
        output_names = [output.name for output in self._session.get_outputs()]
        metadata = self._session.get_modelmeta().custom_metadata_map
        if POSTPROCESS_KEY in metadata:
            self._nms: NmsSettings | None = NmsSettings(**json.loads(metadata[POSTPROCESS_KEY]))
            self._output_names = output_names
        else:
            self._nms = None
            keys = {_strip_port(name): name for name in output_names}
            missing = [key for key in _OD_API_OUTPUTS if key not in keys]
            if missing:
                raise DetectorLoadError(f"{self.model_path}: expected the TF Object Detection API outputs "
                                 f"({', '.join(_OD_API_OUTPUTS)}, num_detections), got {output_names}")
            self._od_keys = keys

    def detect(self, image: np.ndarray) -> Detections:
        """Detections in `image` (uint8 RGB, (height, width, 3))."""
        image = check_image(image)
        batch = image[np.newaxis].astype(self._input_dtype, copy=False)
        height, width = image.shape[:2]
        if self._nms is not None:
            boxes, scores = self._session.run(self._output_names, {self._input_name: batch})
            outputs = multiclass_nms(boxes[0], scores[0], self._nms)
        else:
            names = list(self._od_keys.values())
            values = self._session.run(names, {self._input_name: batch})
            outputs = {_strip_port(name): value for name, value in zip(names, values)}
        return Detections.from_tensorflow(outputs, (width, height), self.label_map)


def _strip_port(name: str) -> str:
    return name.split(":")[0].rsplit("/", 1)[-1]

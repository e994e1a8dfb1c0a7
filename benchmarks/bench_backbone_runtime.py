"""The frozen backbone's forward pass (train's feature pass, the classifier's body) in TensorFlow vs ONNX Runtime.

    python benchmarks/bench_backbone_runtime.py [--backbone efficientnet-lite0] [--size 320] [--batch 16] [--rounds 3]

Builds the feature model `train` caches features with (preprocessing + base + pooling,
`classify.features.build_feature_model`), converts it with tf2onnx (timed), and runs both on
the same batch of real photos (watches-brands, resized as train resizes them): img/s, CPU ms
per image, and the largest feature difference. Not a test; timings on a shared machine are
noisy, the ratio within one run is what counts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    from detcrop.classify.bundle import resize_images
    from detcrop.classify.features import build_feature_model
    from detcrop.data.images import is_image_path, load_image_array

    paths = sorted(path for path in (SHARED / "watches-brands").rglob("*") if is_image_path(path))[::97][:args.batch]
    if len(paths) < args.batch:
        print(f"need {args.batch} photos under {SHARED / 'watches-brands'}", file=sys.stderr)
        return 2
    batch = resize_images([load_image_array(path) for path in paths], args.size)
    model = build_feature_model(args.backbone, args.size)[0]
    signature = [tf.TensorSpec([None, args.size, args.size, 3], tf.float32, name="pixels")]
    function = tf.function(lambda pixels: model(pixels, training=False), input_signature=signature)
    started = time.perf_counter()
    onnx_model, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=17)
    conversion = time.perf_counter() - started
    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(onnx_model.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])

    runners = {"tensorflow": lambda: np.asarray(function(tf.constant(batch))),
               "onnx": lambda: session.run(None, {"pixels": batch})[0]}
    outputs = {name: run() for name, run in runners.items()}  # warm-up (graph building, allocation)
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, run in runners.items():  # interleaved, so load changes hit both
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            timings[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    rate = {name: statistics.median(args.batch / wall for wall, _ in values) for name, values in timings.items()}
    cpu_ms = {name: statistics.median(1000 * cpu / args.batch for _, cpu in values) for name, values in timings.items()}
    difference = float(np.abs(outputs["tensorflow"] - outputs["onnx"]).max())
    print(f"{args.backbone} at {args.size} px, batch {args.batch} real photos, {args.rounds} rounds (median); "
          f"tf2onnx conversion {conversion:.0f} s; max |feature difference| {difference:.1e}; "
          f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', '(unset)')}\n")
    print("| runtime | img/s | CPU ms/img | speed vs TensorFlow |")
    print("|---|---|---|---|")
    for name in runners:
        print(f"| {name} | {rate[name]:.1f} | {cpu_ms[name]:.0f} | {rate[name] / rate['tensorflow']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The frozen backbone's forward pass (train's feature pass, the classifier's body) in TensorFlow vs ONNX Runtime.

    python benchmarks/bench_backbone_runtime.py [--backbone efficientnet-lite0] [--size 320] [--batch 16] [--rounds 3]
                                                [--photos 192] [--ray-workers 2] [--no-ray]

Builds the feature model `train` caches features with (preprocessing + base + pooling,
`classify.features.build_feature_model`), converts it with tf2onnx (timed), and runs both on
the same batch of real photos (watches-brands, resized as train resizes them): img/s, CPU ms
per image, and the largest feature difference.

Then the whole feature pass as `train` runs it (`extract_features`: read, decode, resize,
forward, cache) on `--photos` other watches-brands photos into an empty cache, locally in each
runtime and on a local Ray with `--ray-workers` actors (`train --engine ray`; Ray's start and
one model per actor included, as a user waits for them), beside the raw forward of its runtime.
Not a test; timings on a shared machine are noisy, the ratio within one run is what counts.
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
    parser.add_argument("--photos", type=int, default=192, help="photos of the end-to-end feature pass (0 = skip)")
    parser.add_argument("--ray-workers", type=int, default=2)
    parser.add_argument("--no-ray", action="store_true", help="skip the feature pass on Ray")
    args = parser.parse_args(argv)

    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    from detcrop.classify.bundle import resize_images
    from detcrop.classify.features import build_feature_model
    from detcrop.data.folders import expand_image_paths
    from detcrop.data.images import load_image_array

    folder = SHARED / "watches-brands"
    photos = expand_image_paths([folder]) if folder.is_dir() else []
    paths = photos[::97][:args.batch]
    if len(paths) < args.batch:
        print(f"need {args.batch} photos under {folder}", file=sys.stderr)
        return 2
    batch = resize_images([load_image_array(path) for path in paths], args.size)
    model, source = build_feature_model(args.backbone, args.size)[:2]
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
    if args.photos:
        feature_pass_table(args, model, source, onnx_model.SerializeToString(),
                           [path for path in photos if path not in set(paths)][::7][:args.photos], rate)
    return 0


def feature_pass_table(args, model, source: str, onnx_bytes: bytes, paths: list[Path], raw: dict[str, float]) -> None:
    """img/s of `extract_features` into an empty cache, locally and on Ray, beside the raw forward's."""
    import tempfile

    from detcrop.classify.features import FeatureCache, extract_features
    from detcrop.classify.onnx_runtime import OnnxClassifier
    from detcrop.data.images import file_sha256
    from detcrop.data.ray_runtime import RaySettings

    hashes = [file_sha256(path) for path in paths]
    channels = int(model.output_shape[-1])
    jobs = [("local, tensorflow", "tensorflow", model, None),
            ("local, onnx", "onnx", OnnxClassifier(onnx_bytes, channels), None)]
    if not args.no_ray:
        from detcrop.classify.ray_features import RayFeaturePass

        settings = RaySettings(workers=args.ray_workers)
        for runtime in ("tensorflow", "onnx"):
            jobs.append((f"ray, {args.ray_workers} workers, {runtime} (incl. Ray start)", runtime, model,
                         RayFeaturePass(model, args.backbone, args.size, 0, runtime, settings, args.batch)))
    rates = {}
    for name, runtime, feature_model, feature_pass in jobs:
        with tempfile.TemporaryDirectory() as cache_dir:
            cache = FeatureCache(cache_dir, args.backbone, args.size, source)
            started = time.perf_counter()
            result = extract_features(paths, hashes, feature_model, cache, args.size, ("orig",), args.batch, False,
                                      feature_pass)
            rates[name] = (result.computed / (time.perf_counter() - started), runtime)
    print(f"\nfeature pass (extract_features: read, decode, resize, forward, cache) on {len(paths)} watches-brands "
          f"photos, batch {args.batch}, into an empty cache\n")
    print("| feature pass | img/s | raw forward of its runtime | pass / raw | vs local TensorFlow pass |")
    print("|---|---|---|---|---|")
    baseline = rates["local, tensorflow"][0]
    for name, (rate, runtime) in rates.items():
        print(f"| {name} | {rate:.1f} | {raw[runtime]:.1f} | {rate / raw[runtime]:.2f} | {rate / baseline:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())

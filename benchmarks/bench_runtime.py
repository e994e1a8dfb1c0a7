"""TensorFlow vs ONNX Runtime vs Ray: the crop job and the detector on the same photos (not a test).

    python benchmarks/bench_runtime.py [FOLDER ...] [--rounds 2] [--ray-workers 2] [--no-ray] [--onnx-threads 1 2]

FOLDERs default to ../shared/data/clock-scenes and ../shared/data/caltech-watch/watch. Prints:

1. the raw SSD forward pass (`detect()` on pre-decoded photos, model loaded and warmed up)
   per runtime, photos/s and CPU-ms per photo (process CPU time: what a photo costs on a
   busy machine, where wall time depends on the neighbours);
2. the whole crop job (read, hash, decode, detect, crop, encode, write, manifest) per engine
   and runtime, beside the raw figure of its runtime as a ratio. Local jobs get the loaded
   detector; Ray jobs include starting Ray and loading one detector per actor, as a user
   running the command pays them.

`--onnx-threads N ...` adds ONNX Runtime detectors with N intra-op threads (raw and local
job rows "onnx, N threads"; plain "onnx" is ONNX Runtime's default, one thread per core).

Every figure of one run is taken on the same photos in the same minutes, rounds interleaved,
median reported: compare ratios within a run, not absolute numbers across machines.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from detcrop.detect.base import load_detector  # noqa: E402
from detcrop.detect.crop import CropConfig, crop_photos  # noqa: E402
from photos import load_photos  # noqa: E402  (benchmarks/photos.py)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_FOLDERS = (SHARED / "clock-scenes", SHARED / "caltech-watch" / "watch")
RUNTIMES = ("tensorflow", "onnx")


def _timed(function) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of `function()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", type=Path, default=list(DEFAULT_FOLDERS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ray-workers", type=int, default=2)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray jobs")
    parser.add_argument("--onnx-threads", nargs="*", type=int, default=[],
                        help="also time ONNX Runtime detectors with these intra-op thread counts")
    parser.add_argument("--ray-runtimes", nargs="+", choices=RUNTIMES, default=["onnx"],
                        help="detector runtimes of the Ray jobs (default onnx: TensorFlow actors need ~1.5 GB each)")
    args = parser.parse_args(argv)
    photos, images = load_photos(args.folders)
    if not images:
        print(f"no photos under {', '.join(map(str, args.folders))}", file=sys.stderr)
        return 2
    detectors = {runtime: load_detector("ssd-mobilenet-v2", runtime=runtime) for runtime in RUNTIMES}
    for threads in args.onnx_threads:
        from detcrop.detect.base import onnx_model_path
        from detcrop.detect.onnx_detectors import OnnxDetector

        detectors[f"onnx, {threads} threads"] = OnnxDetector(onnx_model_path("ssd-mobilenet-v2", "onnx"),
                                                              name="ssd-mobilenet-v2", threads=threads)
    variants = list(detectors)
    for detector in detectors.values():
        for image in images[:3]:  # graph optimisation happens on the first calls
            detector.detect(image)

    count = len(images)
    forward: dict[str, list[tuple[float, float]]] = {variant: [] for variant in variants}
    jobs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_runtime_") as scratch:
        inputs = Path(scratch) / "photos"
        inputs.mkdir()
        for number, path in enumerate(photos):  # one flat folder: the job sees exactly these photos
            (inputs / f"{number:05d}_{path.name}").symlink_to(path.resolve())
        for round_number in range(args.rounds):
            for runtime, detector in detectors.items():
                forward[runtime].append(_timed(lambda: [detector.detect(image) for image in images]))
                print(f"round {round_number}: raw {runtime} {count / forward[runtime][-1][0]:.2f} photos/s", flush=True)
                out = Path(scratch) / f"local-{runtime}-{round_number}"
                wall, _ = _timed(lambda: crop_photos(inputs, out, CropConfig(runtime=runtime.split(",")[0]),
                                                     detector=detector, progress=False))
                jobs.setdefault(f"local engine, {runtime}", []).append(len(photos) / wall)
                print(f"round {round_number}: local job {runtime} {len(photos) / wall:.2f} photos/s", flush=True)
            if not args.no_ray:
                from detcrop.detect.ray_engine import crop_photos_ray

                for runtime in args.ray_runtimes:
                    out = Path(scratch) / f"ray-{runtime}-{round_number}"
                    wall, _ = _timed(lambda: crop_photos_ray(inputs, out, CropConfig(runtime=runtime),
                                                             progress=False, workers=args.ray_workers))
                    jobs.setdefault(f"ray engine, {args.ray_workers} workers, {runtime}", []).append(len(photos) / wall)
                    print(f"round {round_number}: ray job {runtime} {len(photos) / wall:.2f} photos/s ({wall:.0f} s)",
                          flush=True)

    rate = {variant: statistics.median(count / wall for wall, _ in forward[variant]) for variant in variants}
    cpu_ms = {variant: statistics.median(1000 * cpu / count for _, cpu in forward[variant]) for variant in variants}
    sizes = [image.shape[0] * image.shape[1] / 1e6 for image in images]
    print(f"{count} photos ({statistics.median(sizes):.2f} MP median) from "
          f"{', '.join(str(folder) for folder in args.folders)}; {args.rounds} rounds, median; "
          f"{os.cpu_count()} CPUs; TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', '(unset)')}\n")
    print("| raw SSD forward (pre-decoded) | photos/s | CPU ms/photo | speed vs TensorFlow |")
    print("|---|---|---|---|")
    for runtime in variants:
        print(f"| {runtime} | {rate[runtime]:.1f} | {cpu_ms[runtime]:.0f} | "
              f"{rate[runtime] / rate['tensorflow']:.2f}x |")
    print("\n| crop job | photos/s | raw forward of its runtime | job / raw | vs local TensorFlow job |")
    print("|---|---|---|---|---|")
    baseline = statistics.median(jobs["local engine, tensorflow"])
    for name, rates in jobs.items():
        job = statistics.median(rates)
        runtime = name.split(", ", 1)[-1] if name.startswith("local") else name.rsplit(", ", 1)[-1]
        print(f"| {name} | {job:.1f} | {rate[runtime]:.1f} | {job / rate[runtime]:.2f} | {job / baseline:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

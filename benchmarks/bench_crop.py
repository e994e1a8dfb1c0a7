"""Throughput of `detcrop crop` against the bare detector on the same photos (not a test).

    python benchmarks/bench_crop.py [FOLDER ...] [--detector ssd-mobilenet-v2] [--rounds 3]

FOLDERs default to ../shared/data/clock-scenes and ../shared/data/caltech-watch. Prints a
table: the detector's forward throughput on pre-decoded images (photos/s; the detector as
`load_detector` gives it, one photo at a time), the whole crop job's throughput as `detcrop
crop` runs it (loading the detector its own way, from the warm ONNX cache, then read, hash,
decode, detect, crop, JPEG-encode, write, manifest), and their ratio. Decoding runs ahead of
the detector on threads and, with ONNX Runtime, the job detects a photo per core at once, so
the ratio shows how much of the decode and I/O the job hides (goal >= 0.9). Each figure is the
median over rounds; timings on a shared machine are noisy.
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

from detcrop.detect.base import load_detector  # noqa: E402
from detcrop.detect.crop import CropConfig, crop_photos  # noqa: E402
from photos import cpu_flags, load_photos  # noqa: E402  (benchmarks/photos.py)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_FOLDERS = (SHARED / "clock-scenes", SHARED / "caltech-watch")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", type=Path, default=list(DEFAULT_FOLDERS))
    parser.add_argument("--detector", default=CropConfig.detector)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=CropConfig.workers)
    args = parser.parse_args(argv)
    photos, images = load_photos(args.folders)
    if not photos:
        print(f"no photos under {', '.join(map(str, args.folders))}", file=sys.stderr)
        return 2
    detector = load_detector(args.detector)
    for image in images[:3]:  # graph optimisation happens on the first calls
        detector.detect(image)
    config = CropConfig(detector=args.detector, workers=args.workers)

    forward_rates, job_rates = [], []
    with tempfile.TemporaryDirectory(prefix="bench_crop_") as scratch:
        # One flat input folder of links, so the job sees exactly the benchmark's photos.
        inputs = Path(scratch) / "photos"
        inputs.mkdir()
        for number, path in enumerate(photos):
            (inputs / f"{number:05d}_{path.name}").symlink_to(path.resolve())
        for round_number in range(args.rounds):
            started = time.perf_counter()
            for image in images:
                detector.detect(image)
            forward_rates.append(len(images) / (time.perf_counter() - started))
            started = time.perf_counter()
            crop_photos(inputs, Path(scratch) / f"out{round_number}", config, progress=False)
            job_rates.append(len(photos) / (time.perf_counter() - started))

    forward, job = statistics.median(forward_rates), statistics.median(job_rates)
    sizes = [image.shape[0] * image.shape[1] / 1e6 for image in images]
    print(f"detector {detector.name}; {len(photos)} photos ({statistics.median(sizes):.2f} MP median) from "
          f"{', '.join(str(folder) for folder in args.folders)}; {args.rounds} rounds, median; "
          f"{os.cpu_count()} CPUs ({cpu_flags()}), {args.workers} decode workers; load average "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| measure | photos/s | ms/photo |")
    print("|---|---|---|")
    print(f"| detector forward, pre-decoded images | {forward:.1f} | {1000 / forward:.0f} |")
    print(f"| detcrop crop job (decode+detect+crop+write) | {job:.1f} | {1000 / job:.0f} |")
    print(f"| ratio job / forward (goal >= 0.9) | {job / forward:.2f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark `detcrop predict`: per-photo latency beside detector + classifier forward, and load time;
with --job, the batch job's throughput beside the raw forward and today's one-photo-at-a-time loop.

    .venv/bin/python benchmarks/bench_predict.py --run demo-out/run --photos ../shared/data/clock-scenes
    .venv/bin/python benchmarks/bench_predict.py --job --run RUN --photos ../shared/data/watches-brands --limit 600
    .venv/bin/python benchmarks/bench_predict.py --job --memory 500,5000 --run RUN --photos ../shared/data/watches-brands

--job, in one run on the same photos: raw photos/s (detector forward on pre-decoded photos, then
the classifier on the pre-cut crops in the job's batches), the one-photo-at-a-time loop
(`Scorer.score` per path: read, decode, detect, crop, classify; what predict did before the batch
job) and the batch job (`detcrop predict --out`: read-ahead threads, batched classifier, records
on disk), with the ratios job / raw and job / loop; --int8 adds the job with the INT8 detector
(`--precision int8`, quantized before the timing) and its ratio to the loop. --memory runs the job in a fresh process on
N photos (the photo list repeated under new names through hard links in a temporary folder) and
reports its peak resident memory.

Raw figure: on pre-decoded photos, the detector's forward pass plus the bundle model's forward
pass on the crops the pipeline would classify (already cut), nothing else. Pipeline figure:
`Scorer.score(path)`, i.e. read + decode + detect + crop + classify (with the bundle's flip
TTA when it has one, as predict does). Goal: pipeline / raw <= 1.2. Each photo is timed
`--repeats` times after one warm-up pass; the median per photo is averaged.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="demo-out/run", help="a run folder (default: the demo's)")
    parser.add_argument("--photos", default=str(Path(__file__).resolve().parents[2] / "shared/data/clock-scenes"))
    parser.add_argument("--limit", type=int, default=29, help="photos to use")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runtime", choices=("tensorflow", "onnx"), default="tensorflow",
                        help="runtime of the detector and the classifier (as `predict --runtime`)")
    parser.add_argument("--job", action="store_true", help="throughput of the batch job (see the module doc)")
    parser.add_argument("--int8", action="store_true", help="with --job: also the job with the INT8 detector")
    parser.add_argument("--memory", default="", help="with --job: photo counts for the peak-memory runs, e.g. 500,5000")
    args = parser.parse_args()
    if args.job:
        return job_throughput(args)

    import numpy as np

    from detcrop.classify.bundle import resize_images
    from detcrop.data.folders import expand_image_paths
    from detcrop.data.images import load_image_array
    from detcrop.detect.crop import crop_detections
    from detcrop.pipeline.scoring import Scorer

    paths = expand_image_paths([args.photos])[: args.limit]
    if not paths:
        print(f"no photos under {args.photos}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    scorer = Scorer.load(args.run, detector_runtime=args.runtime, classifier_runtime=args.runtime)
    load_seconds = time.perf_counter() - start
    images = [load_image_array(path) for path in paths]
    model, size = scorer.bundle.model, scorer.bundle.input_size
    tta = scorer.bundle.metadata.tta_flip
    crops = [[crop.image for crop in crop_detections(image, scorer.detector.detect(image), scorer.crop_config)]
             for image in images]
    batches = [resize_images(found, size) if found else None for found in crops]

    def raw(index: int) -> None:
        scorer.detector.detect(images[index])
        if batches[index] is not None:
            model(batches[index], training=False)
            if tta:
                model(batches[index][:, :, ::-1], training=False)

    def pipeline(index: int) -> None:
        scorer.score(paths[index])

    figures = {}
    for name, function in (("raw", raw), ("pipeline", pipeline)):
        for index in range(len(paths)):  # warm-up: graph tracing for each new shape
            function(index)
        per_photo = []
        for index in range(len(paths)):
            samples = []
            for _ in range(args.repeats):
                tick = time.perf_counter()
                function(index)
                samples.append(time.perf_counter() - tick)
            per_photo.append(statistics.median(samples))
        figures[name] = float(np.mean(per_photo))

    objects = sum(len(found) for found in crops)
    print(f"photos: {len(paths)} from {args.photos}; objects classified: {objects}; run: {args.run} "
          f"({scorer.bundle.metadata.backbone}, {size} px, flip TTA {'on' if tta else 'off'})")
    print(f"{'measure':<44}{'ms/photo':>10}")
    print(f"{'raw: detector + classifier forward':<44}{figures['raw'] * 1000:>10.1f}")
    print(f"{'pipeline: Scorer.score (read..classify)':<44}{figures['pipeline'] * 1000:>10.1f}")
    print(f"{'ratio pipeline / raw (goal <= 1.2)':<44}{figures['pipeline'] / figures['raw']:>10.2f}")
    print(f"{'load: detector + bundle (s)':<44}{load_seconds:>10.2f}")
    return 0


def job_throughput(args) -> int:
    """Raw forward, the one-photo loop and the batch job on the same photos, in one run (see the module doc)."""
    import tempfile

    from detcrop.classify.bundle import resize_images
    from detcrop.data.folders import expand_image_paths
    from detcrop.data.images import load_image_array
    from detcrop.pipeline.cli import main as detcrop
    from detcrop.pipeline.scoring import DEFAULT_BATCH_PHOTOS, Scorer
    from photos import cpu_flags

    paths = expand_image_paths([args.photos])[: args.limit]
    scorer = Scorer.load(args.run, detector_runtime=args.runtime, classifier_runtime=args.runtime)
    images = [load_image_array(path) for path in paths]
    crops = [[region.image for region in scorer.regions(image)[0]] for image in images]
    batches = [[crop for found in crops[start:start + DEFAULT_BATCH_PHOTOS] for crop in found]
               for start in range(0, len(crops), DEFAULT_BATCH_PHOTOS)]
    model, size, tta = scorer.bundle.model, scorer.bundle.input_size, scorer.bundle.metadata.tta_flip
    scorer.score(paths[0])  # warm-up

    tick = time.perf_counter()
    for image in images:
        scorer.detector.detect(image)
    for batch in batches:
        if batch:
            resized = resize_images(batch, size)
            model(resized, training=False)
            if tta:
                model(resized[:, :, ::-1], training=False)
    raw = time.perf_counter() - tick
    tick = time.perf_counter()
    for path in paths:
        scorer.score(path)
    loop = time.perf_counter() - tick
    with tempfile.TemporaryDirectory() as scratch:
        tick = time.perf_counter()
        detcrop(["predict", args.run, *map(str, paths), "--out", f"{scratch}/out", "--runtime", args.runtime, "-q"])
        job = time.perf_counter() - tick
        if args.int8:  # the INT8 detector (quantized once before the timing)
            Scorer.load(args.run, detector_precision="int8")
            tick = time.perf_counter()
            detcrop(["predict", args.run, *map(str, paths), "--out", f"{scratch}/out8", "--runtime", args.runtime,
                     "--precision", "int8", "-q"])
            job_int8 = time.perf_counter() - tick
    load_average = os.getloadavg()
    count = len(paths)
    print(f"photos: {count} from {args.photos}; objects: {sum(map(len, crops))}; run: {args.run}; runtime: "
          f"{args.runtime}; CPU: {os.cpu_count()} cores, {cpu_flags()}; load average {load_average[0]:.1f}")
    print(f"{'measure':<58}{'photos/s':>10}")
    print(f"{'raw: detector + classifier forward (pre-decoded, pre-cut)':<58}{count / raw:>10.1f}")
    print(f"{'loop: Scorer.score one photo at a time':<58}{count / loop:>10.1f}")
    print(f"{'job: detcrop predict --out (incl. parquet, summary)':<58}{count / job:>10.1f}")
    print(f"{'ratio job / raw (goal >= 0.9)':<58}{raw / job:>10.2f}")
    print(f"{'ratio job / loop (goal >= 1.5)':<58}{loop / job:>10.2f}")
    if args.int8:
        print(f"{'job with --precision int8':<58}{count / job_int8:>10.1f}")
        print(f"{'ratio job int8 / loop':<58}{loop / job_int8:>10.2f}")
    for total in filter(None, (int(part) for part in args.memory.split(",") if part.strip())):
        print(f"{'peak resident memory, job on ' + str(total) + ' photos (MiB)':<58}"
              f"{_job_peak_memory(args, paths, total):>10.0f}")
    return 0


def _job_peak_memory(args, paths: list, total: int) -> float:
    """Peak RSS (MiB) of `detcrop predict --out` in a fresh process on `total` photos (hard links to `paths`)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch, "photos")
        folder.mkdir()
        for index in range(total):
            source = Path(paths[index % len(paths)]).resolve()
            target = folder / f"{index:06d}{source.suffix}"
            try:
                os.link(source, target)
            except OSError:  # another file system: a link to the file is read the same way
                target.symlink_to(source)
        # A wrapper process, so each count's peak is its own (RUSAGE_CHILDREN keeps the largest child's).
        command = [sys.executable, "-m", "detcrop.pipeline.cli", "predict", args.run, str(folder), "--out",
                   f"{scratch}/out", "--runtime", args.runtime, "-q"]
        wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
                   "stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        output = subprocess.run([sys.executable, "-c", wrapper, *command], check=True, capture_output=True, text=True)
    return int(output.stdout.split()[-1]) / 1024


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark `detcrop predict`: per-photo latency beside detector + classifier forward, and load time.

    .venv/bin/python benchmarks/bench_predict.py --run demo-out/run --photos ../shared/data/clock-scenes

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
    args = parser.parse_args()

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


if __name__ == "__main__":
    sys.exit(main())

"""How often the detector yields a crop on real photos, per score threshold (not a test).

    python benchmarks/detector_recall.py [--detector ssd-mobilenet-v2] [--target clock]

Folders (default ../shared/data): clock-scenes (every photo shows a clock or watch),
caltech-watch/watch (object-centred watches) and caltech-watch/background (random scenes,
mostly without one). Prints, per threshold, the share of photos that yield at least one crop
with the otherwise-default CropConfig; the README's threshold choice comes from this table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from detcrop.data.folders import expand_image_paths  # noqa: E402
from detcrop.data.images import ImageError, load_image_array  # noqa: E402
from detcrop.detect.base import load_detector  # noqa: E402
from detcrop.detect.crop import CropConfig, crop_detections  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FOLDERS = {
    "clock-scenes": SHARED / "clock-scenes",
    "caltech watch": SHARED / "caltech-watch" / "watch",
    "caltech background": SHARED / "caltech-watch" / "background",
}
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", default=CropConfig.detector)
    parser.add_argument("--target", action="append", help="COCO class name or id (default clock)")
    args = parser.parse_args(argv)
    base = CropConfig(detector=args.detector, targets=tuple(args.target or CropConfig.targets))
    missing = [str(folder) for folder in FOLDERS.values() if not folder.is_dir()]
    if missing:
        print(f"folders not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    detector = load_detector(base.detector)
    started = time.perf_counter()
    hits: dict[str, dict[float, int]] = {}
    counts: dict[str, int] = {}
    for title, folder in FOLDERS.items():
        photos = expand_image_paths([folder])
        hits[title] = {threshold: 0 for threshold in THRESHOLDS}
        counts[title] = 0
        for path in photos:
            try:
                image = load_image_array(path)
            except ImageError as error:
                print(f"skipped {error}", file=sys.stderr)
                continue
            counts[title] += 1
            detections = detector.detect(image)
            for threshold in THRESHOLDS:
                config = dataclasses.replace(base, score_threshold=threshold)
                hits[title][threshold] += bool(crop_detections(image, detections, config))
    print(f"detector {detector.name}, targets {','.join(base.targets)}, margin {base.margin}, "
          f"min_size {base.min_size}; share of photos with at least one crop "
          f"({time.perf_counter() - started:.0f} s)\n")
    header = "| threshold | " + " | ".join(f"{title} (n={counts[title]})" for title in FOLDERS) + " |"
    print(header)
    print("|" + "---|" * (len(FOLDERS) + 1))
    for threshold in THRESHOLDS:
        marker = " (default)" if threshold == CropConfig.score_threshold else ""
        cells = [f"{hits[title][threshold] / max(counts[title], 1):.0%} ({hits[title][threshold]})" for title in FOLDERS]
        print(f"| {threshold:g}{marker} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

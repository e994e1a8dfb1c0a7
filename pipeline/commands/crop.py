"""`detcrop crop INPUT --out DATASET`: detect objects in photos and crop them into class folders."""

from __future__ import annotations

import argparse
import json

from detcrop.detect.base import DEFAULT_DETECTOR, DEFAULT_RUNTIME, KNOWN_DETECTORS, RUNTIMES
from detcrop.detect.geometry import SQUARE_MODES

# CropConfig lives in detect.crop, which imports only numpy/Pillow/tqdm: cheap enough for --help.
from detcrop.detect.crop import ON_EMPTY_MODES, CropConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = CropConfig()
    parser = subparsers.add_parser(
        "crop",
        help="detect objects (COCO 'clock' by default) in photos and crop them into a class-folder dataset",
        description="INPUT is a folder of photos (one class, named by --label) or of class folders "
        "(INPUT/<label>/*.jpg, labels carried to DATASET/<label>/). Writes DATASET/manifest.jsonl "
        "(one record per crop, and per photo without one), DATASET/crop_config.json and "
        "DATASET/summary.json. Rerun the same command to resume an interrupted job.",
    )
    parser.add_argument("input", help="folder of photos, or of class folders")
    parser.add_argument("--out", required=True, help="output dataset folder (outside INPUT)")
    parser.add_argument("--label", help="treat INPUT as one class with this name (default: class folders when "
                        "INPUT has only folders, else the first target's name)")
    parser.add_argument("--config", help="a crop_config.json to start from (e.g. an earlier dataset's); "
                        "options given on the command line override it")
    parser.add_argument("--detector", help=f"{' or '.join(KNOWN_DETECTORS)}, a TF Hub handle, a SavedModel "
                        f"folder or a frozen .pb graph (default {DEFAULT_DETECTOR})")
    parser.add_argument("--runtime", choices=RUNTIMES, help="detector runtime: tensorflow, or onnx (ONNX Runtime; "
                        f"the SSD graph is converted once and cached) (default {DEFAULT_RUNTIME})")
    parser.add_argument("--target", action="append", help="COCO class name or id to crop; repeat or use commas "
                        f"(default {','.join(defaults.targets)})")
    parser.add_argument("--score-threshold", type=float, help=f"minimum box score (default {defaults.score_threshold})")
    parser.add_argument("--margin", type=float, help="grow each side by this fraction of the box size "
                        f"(default {defaults.margin})")
    parser.add_argument("--square", choices=SQUARE_MODES, help=f"square crops (default {defaults.square})")
    parser.add_argument("--min-size", type=int, help=f"minimum crop side in pixels (default {defaults.min_size})")
    parser.add_argument("--max-crops", type=int, help="crops per photo, best first "
                        f"(default {defaults.max_crops_per_photo})")
    parser.add_argument("--on-empty", choices=ON_EMPTY_MODES, help="photos with no box: record them, or crop the "
                        f"whole photo (default {defaults.on_empty})")
    parser.add_argument("--jpeg-quality", type=int, help=f"crop JPEG quality (default {defaults.jpeg_quality})")
    parser.add_argument("--workers", type=int, help=f"decoding threads (default {defaults.workers})")
    engine = parser.add_argument_group("engine (where the job runs)")
    engine.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: this process (default); ray: Ray Data, one detector per worker "
                        "(pip install 'detcrop[ray]'); INPUT may then also be an s3:// or gs:// URI")
    engine.add_argument("--ray-address", help="Ray cluster to join (auto, or ray://HOST:10001); default: start a "
                        "local Ray with --ray-workers CPUs")
    engine.add_argument("--ray-workers", type=int, default=2, help="detector actors (one CPU each; default 2)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from detcrop.data.config import build_config, load_config_file
    from detcrop.detect.crop import crop_photos
    from detcrop.pipeline.cli import print_skipped

    base = load_config_file(CropConfig, args.config) if args.config else None
    if base is not None:
        from detcrop.detect.base import detector_to_load

        # A config file is data: a detector path or URL in it loads only when --detector repeats it.
        detector_to_load(base.detector, args.detector, f"{args.config} (detector)")
    targets = None
    if args.target:
        targets = [part for value in args.target for part in value.split(",") if part.strip()]
    overrides = {
        "detector": args.detector, "targets": targets, "score_threshold": args.score_threshold,
        "margin": args.margin, "square": args.square, "min_size": args.min_size,
        "max_crops_per_photo": args.max_crops, "on_empty": args.on_empty, "jpeg_quality": args.jpeg_quality,
        "workers": args.workers, "runtime": args.runtime,
    }
    config = build_config(CropConfig, {key: value for key, value in overrides.items() if value is not None}, base)
    progress = not (args.quiet or args.json)
    if args.engine == "ray":
        from detcrop.detect.ray_engine import crop_photos_ray

        summary = crop_photos_ray(args.input, args.out, config, label=args.label, progress=progress,
                                  address=args.ray_address, workers=args.ray_workers)
    else:
        if args.ray_address:
            raise ValueError("--ray-address needs --engine ray")
        summary = crop_photos(args.input, args.out, config, label=args.label, progress=progress)
    print_skipped(summary.skipped)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(f"{summary.dataset}: {summary.photos_seen} photos seen, {summary.cropped} cropped, "
              f"{summary.empty} empty, {summary.failed} failed; {summary.crops} crops "
              f"({', '.join(f'{label}: {count}' for label, count in summary.crops_per_label.items()) or 'none'})")
        if summary.skipped_done:
            print(f"resumed: {summary.skipped_done} photos were already done")
        if summary.failed or summary.empty:
            print(f"see {summary.dataset}/manifest.jsonl for the reason per photo (status empty or failed)")
    return 0

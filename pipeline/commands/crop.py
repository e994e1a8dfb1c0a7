"""`detcrop crop INPUT --out DATASET`: detect objects in photos and crop them into class folders."""

from __future__ import annotations

import argparse
import json
import time

from detcrop.data.config import add_config_arguments

# CropConfig lives in detect.crop, which imports only numpy/Pillow/tqdm: cheap enough for --help.
from detcrop.detect.crop import CropConfig
from detcrop.pipeline.cli import add_engine_arguments

#: Shorter spellings of CropConfig flags (every field is also ``--field-name``).
FLAG_ALIASES = {"targets": ["--target"], "max_crops_per_photo": ["--max-crops"]}


def register(subparsers: argparse._SubParsersAction) -> None:
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
    parser.add_argument("--label", help="one class name for all of INPUT (default: class folders if INPUT holds "
                        "only folders, else the first target)")
    parser.add_argument("--config", help="a crop_config.json to start from (e.g. an earlier dataset's); "
                        "options given on the command line override it")
    add_config_arguments(parser, CropConfig, FLAG_ALIASES)
    add_engine_arguments(parser, "Ray Data; INPUT may be an s3:// or gs:// URI", "detector")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from detcrop.data.config import build_config, config_overrides, load_config_file
    from detcrop.detect.crop import crop_photos
    from detcrop.pipeline.cli import print_skipped, ray_settings

    base = load_config_file(CropConfig, args.config) if args.config else None
    overrides = config_overrides(args, CropConfig)
    if base is not None:
        from detcrop.detect.base import detector_to_load

        # A config file is data: a detector path or URL in it loads only when --detector repeats it.
        detector_to_load(base.detector, overrides.get("detector"), f"{args.config} (detector)")
    config = build_config(CropConfig, overrides, base)
    progress = not (args.quiet or args.json)
    started = time.perf_counter()
    ray = ray_settings(args)
    if ray is not None:
        from detcrop.detect.ray_engine import crop_photos_ray

        summary = crop_photos_ray(args.input, args.out, config, label=args.label, progress=progress,
                                  address=ray.address, workers=ray.workers)
    else:
        summary = crop_photos(args.input, args.out, config, label=args.label, progress=progress)
    print_skipped(summary.skipped)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(format_crop_summary(summary, time.perf_counter() - started))
    return 0


def crop_figures(summary) -> str:
    """``60 photos: 53 cropped, 7 empty, 0 failed; 53 crops (classic: 27, diver: 26)``."""
    per_label = ", ".join(f"{label}: {count}" for label, count in summary.crops_per_label.items()) or "none"
    return (f"{summary.photos_seen} photos: {summary.cropped} cropped, {summary.empty} empty, {summary.failed} "
            f"failed; {summary.crops} crops ({per_label})")


def format_crop_summary(summary, seconds: float) -> str:
    """The closing summary of `detcrop crop` for a `detect.crop.CropSummary`."""
    from detcrop.pipeline.console import format_duration, format_summary

    rows = [("dataset", f"{summary.dataset}/ (manifest.jsonl, crop_config.json, summary.json)"),
            ("photos", crop_figures(summary))]
    if summary.skipped_done:
        rows.append(("resumed", f"{summary.skipped_done} photos were already done"))
    if summary.duplicates:
        rows.append(("duplicates", f"{summary.duplicates} byte-identical copies not cropped again"))
    if summary.failed or summary.empty:
        rows.append(("reasons", f"{summary.dataset}/manifest.jsonl (status empty or failed)"))
    return format_summary(f"crop done in {format_duration(seconds)}", rows)

"""`detcrop validate DIR`: is this class-folder dataset usable for training?"""

from __future__ import annotations

import argparse
import json

from detcrop.data.config import build_config
from detcrop.data.validate import ValidationConfig, validate_dataset


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check a class-folder dataset (ROOT/<class>/<image>)",
        description="Decode every image, count per class, find bad files, duplicates and imbalance. "
        "Exit 0 when the dataset is usable, 1 when it is not.",
    )
    parser.add_argument("dataset", help="dataset root with one folder per class")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--strict", action="store_true", help="treat warnings as errors too")
    defaults = ValidationConfig()
    parser.add_argument("--min-classes", type=int, default=defaults.min_classes)
    parser.add_argument("--min-images", type=int, default=defaults.min_images_per_class,
                        help="minimum readable images per class (default %(default)s)")
    parser.add_argument("--max-imbalance", type=float, default=defaults.max_imbalance,
                        help="warn when largest/smallest class exceeds this (default %(default)s)")
    parser.add_argument("--max-bytes", type=int, default=defaults.max_bytes,
                        help="refuse files larger than this many bytes (default %(default)s)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = build_config(ValidationConfig, {
        "min_classes": args.min_classes,
        "min_images_per_class": args.min_images,
        "max_imbalance": args.max_imbalance,
        "max_bytes": args.max_bytes,
    })
    report = validate_dataset(args.dataset, config, progress=not (args.json or args.quiet))
    usable = report.usable and not (args.strict and report.warnings)
    if args.json:
        print(json.dumps(report.to_dict() | {"usable": usable}, indent=2, ensure_ascii=False))
    else:
        print(report.format_text())
        if args.strict and report.warnings and report.usable:
            print("usable: NO (--strict and there are warnings)")
    return 0 if usable else 1

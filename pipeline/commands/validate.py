"""`detcrop validate DIR`: is this class-folder dataset usable for training?"""

from __future__ import annotations

import argparse
import json

from detcrop.data.config import add_config_arguments, build_config, config_overrides
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
    add_config_arguments(parser, ValidationConfig, {"min_images_per_class": ["--min-images"]})
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = build_config(ValidationConfig, config_overrides(args, ValidationConfig))
    report = validate_dataset(args.dataset, config, progress=not (args.json or args.quiet))
    usable = report.usable and not (args.strict and report.warnings)
    if args.json:
        print(json.dumps(report.to_dict() | {"usable": usable}, indent=2, ensure_ascii=False))
    else:
        print(report.format_text())
        if args.strict and report.warnings and report.usable:
            print("usable: NO (--strict and there are warnings)")
    return 0 if usable else 1

"""`detcrop add DATASET CLASS IMAGES...`: the beginner's "make a class, add images" step."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detcrop.data.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "add",
        help="add images to a class of a dataset (creates the class; squares and dedupes the images)",
        description="Each image is decoded (bad files are reported and skipped), cut to its centre square, "
        "resized and written as DATASET/CLASS/<hash>.png; the same image added twice is kept once. "
        "Then run `detcrop validate DATASET` and `detcrop train DATASET --out RUN`.",
    )
    parser.add_argument("dataset", help="dataset root (created if missing)")
    parser.add_argument("class_name", metavar="class", help="class (folder) name, created if missing: at most "
                        "64 characters, no '/', no leading '.', no control characters")
    parser.add_argument("images", nargs="+", help="image files or folders of images")
    parser.add_argument("--size", type=int, default=224, help="side of the squared images in pixels (default 224)")
    parser.add_argument("--keep-shape", action="store_true", help="copy as decoded, without squaring or resizing")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from detcrop.data.folders import add_images, check_class_name, find_image_paths, normalize_class_name, scan_class_folders
    from detcrop.data.outputs import check_output_path
    from detcrop.pipeline.cli import print_skipped

    if args.size < 16:
        raise UsageError(f"--size must be at least 16 pixels, got {args.size}")
    args.class_name = check_class_name(normalize_class_name(args.class_name))
    # Adding a folder that holds the class (or the dataset itself) would add the class to itself.
    check_output_path(Path(args.dataset) / args.class_name, "DATASET/CLASS",
                      inputs=[("the image input", path) for path in args.images])
    paths, skipped = find_image_paths(args.images)
    report = add_images(args.dataset, args.class_name, paths, square=not args.keep_shape, size=args.size)
    if not paths:
        print(f"no images found in {', '.join(args.images)}", file=sys.stderr)
    print(f"{args.class_name}: added {len(report.added)}, already there {len(report.duplicates)}, "
          f"failed {len(report.failed)}")
    print_skipped(skipped + report.failed)
    counts = scan_class_folders(args.dataset).counts()
    print("images per class: " + ", ".join(f"{name} {count}" for name, count in counts.items()))
    short = [name for name, count in counts.items() if count < 5]
    if short or len(counts) < 2:
        print("before training: every class needs at least 5 images and there must be 2 classes or more"
              + (f" (short: {', '.join(short)})" if short else ""))
    return 0 if report.added or report.duplicates else 1

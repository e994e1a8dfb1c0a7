"""`detcrop predict RUN PHOTOS...`: detect, crop as in training, classify; table, JSON, CSV, plots."""

from __future__ import annotations

import argparse
import sys
import time

from detcrop.data.errors import UsageError
from detcrop.data.runtime import RUNTIMES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="score new photos end to end with a trained run",
        description="For every photo: detect the target objects, crop them exactly as the run's training crops "
        "were made, classify each crop. Prints a table; --json/--csv write the same to files.",
    )
    parser.add_argument("run", help="run folder written by `detcrop train` (model.keras + bundle.json)")
    parser.add_argument("photos", nargs="+", help="photo files or folders (searched recursively)")
    parser.add_argument("--detector", help="detector name, TF Hub handle, SavedModel folder or .pb "
                        "(default: the one the training crops were made with)")
    parser.add_argument("--runtime", choices=RUNTIMES, help="runtime of detector and classifier: onnx (converted once, "
                        "cached), tensorflow, or auto (onnx where installed and converting; default)")
    parser.add_argument("--precision", choices=("float32", "int8"), help="detector precision; int8 needs ONNX Runtime "
                        "(default: the training crops' precision)")
    parser.add_argument("--no-detect", action="store_true", help="classify whole images (data already cropped)")
    parser.add_argument("--unknown-threshold", type=float,
                        help="label an object 'unknown' under this top probability (default: chosen on the "
                        "run's validation data, stored in bundle.json)")
    parser.add_argument("--on-empty", choices=("record", "whole-photo"),
                        help="photo with no detection: 'whole-photo' scores the whole photo, 'record' leaves it "
                        "unanswered (default: the run's crop_config)")
    parser.add_argument("--score-threshold", type=float, help="detector score threshold (default: the crop config's)")
    parser.add_argument("--max-objects", type=int, default=10, help="objects scored per photo, best first (default 10)")
    parser.add_argument("--json", dest="json_path", help="write all results to this JSON file")
    parser.add_argument("--csv", dest="csv_path", help="write one row per object to this CSV file")
    parser.add_argument("--plot", metavar="DIR", help="write a PNG per photo (boxes and a bar per class) into DIR")
    beginner = parser.add_argument_group("beginner's questions (answers printed per photo)")
    beginner.add_argument("--which-class", action="store_true", help="print the photo's class")
    beginner.add_argument("--confidence-of", metavar="CLASS", help="print the confidence of CLASS (0 if nothing found)")
    beginner.add_argument("--is-class", metavar="CLASS", help="print true/false: is the photo's class CLASS?")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from detcrop.data.folders import find_image_paths
    from detcrop.pipeline.cli import print_skipped
    from detcrop.pipeline.prediction_outputs import format_table, score_photos
    from detcrop.pipeline.scoring import Scorer

    if args.max_objects < 1:
        raise UsageError(f"--max-objects must be >= 1, got {args.max_objects}")
    _check_outputs(args)
    started = time.perf_counter()
    scorer = Scorer.load(args.run, detector=args.detector, detect=not args.no_detect,
                         unknown_threshold=args.unknown_threshold, max_objects=args.max_objects,
                         score_threshold=args.score_threshold, detector_runtime=args.runtime,
                         on_empty=args.on_empty, classifier_runtime=args.runtime,
                         detector_precision=args.precision)
    for name in (args.confidence_of, args.is_class):
        if name is not None and name not in scorer.class_names:
            raise UsageError(f"unknown class {name!r}; this run's classes are: {', '.join(scorer.class_names)}")
    paths, skipped = find_image_paths(args.photos)
    print_skipped(skipped)
    if not paths:
        raise UsageError(f"no photos found in {', '.join(args.photos)}")
    results = score_photos(scorer, paths, args.plot, args.json_path, args.csv_path, args.run, progress=not args.quiet)
    print(format_table(results))
    for result in results:
        answers = []
        if args.which_class:
            answers.append(f"class={result.top_class() or 'nothing found'}")
        if args.confidence_of:
            answers.append(f"confidence({args.confidence_of})={result.confidence(args.confidence_of):.3f}")
        if args.is_class:
            answers.append(f"is {args.is_class}={'true' if result.is_class(args.is_class) else 'false'}")
        if answers:
            print(f"{result.path}: " + "  ".join(answers))
    print()
    print(format_predict_summary(results, args.run, time.perf_counter() - started, json_path=args.json_path,
                                 csv_path=args.csv_path, plot_dir=args.plot))
    failed = sum(result.error is not None for result in results)
    if failed:
        print(f"{failed} of {len(results)} photo(s) could not be read (see the table)", file=sys.stderr)
    return 0 if failed < len(results) else 1


def predict_figures(results) -> str:
    """``8 photos: 7 classified, 1 without an object, 0 unreadable``."""
    unreadable = sum(result.error is not None for result in results)
    classified = sum(result.error is None and bool(result.objects) for result in results)
    return (f"{len(results)} photos: {classified} classified, {len(results) - classified - unreadable} without an "
            f"object, {unreadable} unreadable")


def format_predict_summary(results, run: str, seconds: float, json_path: str | None = None,
                           csv_path: str | None = None, plot_dir: str | None = None) -> str:
    """The closing summary of `detcrop predict`: what was scored with which run, and the files written."""
    from detcrop.pipeline.console import format_duration, format_summary

    rows = [("run", run), ("photos", predict_figures(results))]
    rows += [(label, path) for label, path in (("JSON", json_path), ("CSV", csv_path)) if path]
    if plot_dir:
        rows.append(("plots", f"{str(plot_dir).rstrip('/')}/ (one PNG per photo)"))
    return format_summary(f"predict done in {format_duration(seconds)}", rows)


def _check_outputs(args: argparse.Namespace) -> None:
    """Before any model loads: no output may land in the run folder, over a photo, or over another output."""
    from detcrop.data.outputs import check_output_path, check_writable

    photos = [("the photo input", path) for path in args.photos]
    written: list = []
    for flag, output in (("--json", args.json_path), ("--csv", args.csv_path), ("--plot", args.plot)):
        if output is None:
            continue
        kind = "folder" if flag == "--plot" else "file"
        check_output_path(output, flag, inputs=photos, protected=[("the run folder", args.run), *written], kind=kind)
        check_writable(output, kind)  # before scoring every photo, not after
        written.append((f"the {flag} output", output))

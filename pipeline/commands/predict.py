"""`detcrop predict RUN PHOTOS...`: detect, crop as in training, classify; table, JSON, CSV, plots."""

from __future__ import annotations

import argparse
import sys
import time

from detcrop.data.errors import UsageError
from detcrop.data.runtime import RUNTIMES
from detcrop.pipeline.cli import add_engine_arguments

#: Default photos per classifier pass (`Scorer.score_many`).
DEFAULT_BATCH_PHOTOS = 16
#: Up to this many photos, predict prints a row per photo (`--table` asks for it beyond).
TABLE_PHOTOS = 50


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="score new photos end to end with a trained run",
        description="For every photo: detect the target objects, crop them exactly as the run's training crops "
        "were made, classify each crop. --out PRED_DIR makes it a resumable batch job (predictions.jsonl, "
        "predictions.parquet, summary.json); --json/--csv write one document for a handful of photos.",
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
    parser.add_argument("--out", metavar="PRED_DIR", help="batch job folder: predictions.jsonl as it goes, then "
                        "predictions.parquet and summary.json; rerun to resume")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_PHOTOS,
                        help=f"photos whose crops share one classifier pass, 1 or more (default {DEFAULT_BATCH_PHOTOS})")
    parser.add_argument("--table", action="store_true", help=f"print the per-photo table whatever the number of "
                        f"photos (default: only up to {TABLE_PHOTOS})")
    parser.add_argument("--json", dest="json_path", help="write all results to this JSON file")
    parser.add_argument("--csv", dest="csv_path", help="write one row per object to this CSV file")
    parser.add_argument("--plot", metavar="DIR", help="write a PNG per photo (boxes and a bar per class) into DIR")
    beginner = parser.add_argument_group("beginner's questions (answers printed per photo)")
    beginner.add_argument("--which-class", action="store_true", help="print the photo's class")
    beginner.add_argument("--confidence-of", metavar="CLASS", help="print the confidence of CLASS (0 if nothing found)")
    beginner.add_argument("--is-class", metavar="CLASS", help="print true/false: is the photo's class CLASS?")
    add_engine_arguments(parser, "scoring on Ray Data (with --out)", "scorer")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from detcrop.pipeline.cli import print_skipped, ray_settings
    from detcrop.pipeline.prediction_outputs import format_table
    from detcrop.pipeline.scoring import Scorer

    for flag, value in (("--max-objects", args.max_objects), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    ray = ray_settings(args)
    if ray is not None and args.out is None:
        raise UsageError("--engine ray runs the batch job: give it --out PRED_DIR")
    _check_outputs(args)
    started = time.perf_counter()
    load_kwargs = {"detector": args.detector, "detect": not args.no_detect, "unknown_threshold": args.unknown_threshold,
                   "max_objects": args.max_objects, "score_threshold": args.score_threshold,
                   "detector_runtime": args.runtime, "on_empty": args.on_empty, "classifier_runtime": args.runtime,
                   "detector_precision": args.precision}
    parallel = 1
    if args.out is not None:  # a crawl: throughput over one photo's latency
        parallel, load_kwargs["threads"] = _job_parallelism(args.runtime, ray)
    scorer = Scorer.load(args.run, **load_kwargs)
    for name in (args.confidence_of, args.is_class):
        if name is not None and name not in scorer.class_names:
            raise UsageError(f"unknown class {name!r}; this run's classes are: {', '.join(scorer.class_names)}")
    photos, skipped, filesystem = _list_photos(args, ray)
    print_skipped(skipped)
    if not photos:
        raise UsageError(f"no photos found in {', '.join(args.photos)}")
    table = args.table or len(photos) <= TABLE_PHOTOS
    results, summary = _score(args, scorer, load_kwargs, photos, filesystem, ray, keep=table or not args.out,
                              parallel=parallel)
    if table:
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
    counts = summary or _counts(results)
    print(format_predict_summary(counts, args.run, time.perf_counter() - started, json_path=args.json_path,
                                 csv_path=args.csv_path, plot_dir=args.plot, out_dir=args.out))
    if counts["failed"]:
        print(f"{counts['failed']} of {counts['photos']} photo(s) could not be read (see the table or the records)",
              file=sys.stderr)
    return 0 if counts["failed"] < counts["photos"] else 1


def _list_photos(args: argparse.Namespace, ray) -> tuple[list, list, object]:
    """(photos, skipped, pyarrow filesystem): local paths, or `RayPhoto`s with --engine ray."""
    from detcrop.data.folders import find_image_paths

    if ray is not None:
        from detcrop.pipeline.ray_predict import list_ray_photos

        return list_ray_photos(args.photos)
    paths, skipped = find_image_paths(args.photos)
    return paths, skipped, None


def _job_parallelism(runtime: str | None, ray) -> tuple[int, int | None]:
    """(batches the local job scores at once, ONNX Runtime threads per model call) for `--out`.

    On Ray each actor holds one CPU: one thread. Locally, ONNX Runtime models score several
    batches at once on a thread each (`data.runtime.parallel_split`); TensorFlow runs as before.
    """
    from detcrop.data.runtime import AUTO, parallel_split, resolve_runtime

    if ray is not None:
        return 1, 1
    if resolve_runtime(runtime or AUTO) != "onnx":
        return 1, None
    return parallel_split()


def _score(args: argparse.Namespace, scorer, load_kwargs: dict, photos: list, filesystem, ray, keep: bool,
           parallel: int = 1):
    """(the results kept for the table, the answers and --json/--csv; the batch job's summary or None)."""
    from detcrop.pipeline.prediction_outputs import (PhotoPlotter, predictions_document, score_photos, write_csv,
                                                     write_json)

    if args.out is None:
        return score_photos(scorer, photos, args.plot, args.json_path, args.csv_path, args.run,
                            progress=not args.quiet, batch_size=args.batch_size), None
    from detcrop.pipeline.batch_predict import job_settings, run_predict_job

    kept: list = []
    plotter = PhotoPlotter(args.plot, scorer.class_names, [getattr(photo, 'path', photo) for photo in photos]) \
        if args.plot else None

    def on_result(result) -> None:
        if keep or args.json_path or args.csv_path:
            kept.append(result)
        if plotter is not None:
            plotter.plot(result)

    def score(done):
        if ray is not None:
            from detcrop.pipeline.ray_predict import score_on_ray

            return score_on_ray(args.run, load_kwargs, photos, filesystem, ray, done, args.batch_size)
        return scorer.score_many(photos, args.batch_size, skip=lambda path, sha256: (path, sha256) in done,
                                 parallel=parallel)

    settings = job_settings(scorer, args.run, {"runtime": args.runtime or "auto"})
    summary = run_predict_job(args.out, settings, score, len(photos), scorer.class_names, progress=not args.quiet,
                              on_result=on_result)
    if args.json_path is not None:
        write_json(args.json_path, predictions_document(kept, scorer.class_names, scorer.unknown_threshold, args.run))
    if args.csv_path is not None:
        write_csv(args.csv_path, kept, scorer.class_names)
    return kept, summary


def _counts(results) -> dict:
    from detcrop.pipeline.batch_predict import record_of, summarise

    return summarise(map(record_of, results), [])


def predict_figures(counts: dict) -> str:
    """``8 photos: 7 classified, 1 without an object, 0 unreadable`` from `batch_predict.summarise` counts."""
    classified = counts["photos"] - counts["no_object"] - counts["failed"]
    return (f"{counts['photos']} photos: {classified} classified, {counts['no_object']} without an object, "
            f"{counts['failed']} unreadable")


def format_predict_summary(counts: dict, run: str, seconds: float, json_path: str | None = None,
                           csv_path: str | None = None, plot_dir: str | None = None, out_dir: str | None = None) -> str:
    """The closing summary of `detcrop predict`: what was scored with which run, and the files written."""
    from detcrop.pipeline.console import format_duration, format_summary

    rows = [("run", run), ("photos", predict_figures(counts))]
    if out_dir:
        resumed = f", {counts['recorded_before']} recorded by an earlier run" if counts.get("recorded_before") else ""
        rows.append(("predictions", f"{str(out_dir).rstrip('/')}/: predictions.jsonl, predictions.parquet, "
                                    f"summary.json ({counts['scored_this_run']} scored now{resumed})"))
    rows += [(label, path) for label, path in (("JSON", json_path), ("CSV", csv_path)) if path]
    if plot_dir:
        rows.append(("plots", f"{str(plot_dir).rstrip('/')}/ (one PNG per photo)"))
    return format_summary(f"predict done in {format_duration(seconds)}", rows)


def _check_outputs(args: argparse.Namespace) -> None:
    """Before any model loads: no output may land in the run folder, over a photo, or over another output."""
    from detcrop.data.outputs import check_output_path, check_writable

    photos = [("the photo input", path) for path in args.photos if "://" not in path]
    written: list = []
    for flag, output in (("--json", args.json_path), ("--csv", args.csv_path), ("--plot", args.plot),
                         ("--out", args.out)):
        if output is None:
            continue
        kind = "folder" if flag in ("--plot", "--out") else "file"
        check_output_path(output, flag, inputs=photos, protected=[("the run folder", args.run), *written], kind=kind)
        check_writable(output, kind)  # before scoring every photo, not after
        written.append((f"the {flag} output", output))

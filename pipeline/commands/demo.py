"""`detcrop demo --out DIR`: the whole pipeline offline on the default models and demo photos.

1. compose labelled photos (two watch styles on scikit-image's public-domain photos) and a
   few unlabelled new ones (`pipeline.demo_scenes`);
2. `crop`: detect the watches with the offline SSD and crop them into a dataset;
3. `train`: EfficientNet-Lite0 features, head on top, reports;
4. `predict`: score the new photos end to end; JSON, CSV and one plot per photo.

Each step is the library call behind the matching subcommand, so the printed commands
reproduce it. Rerunning resumes the crop job and retrains.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline offline on generated demo photos (crop, train, predict)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--out", default="demo-out", help="output folder (default %(default)s)")
    parser.add_argument("--per-class", type=int, default=30, help="training photos per class (default %(default)s)")
    parser.add_argument("--new", type=int, default=4, help="new photos per class to score (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="photo composition and training seed")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from detcrop.classify.training import make_train_config, train
    from detcrop.detect.base import load_configured_detector
    from detcrop.detect.crop import CropConfig, crop_photos
    from detcrop.pipeline.demo_scenes import write_demo_photos
    from detcrop.pipeline.prediction_outputs import format_table, score_photos
    from detcrop.pipeline.scoring import Scorer

    out = Path(args.out)
    photos, new_photos = out / "photos", out / "new-photos"
    dataset, run_dir, predictions = out / "dataset", out / "run", out / "predictions"
    _check_demo_folder(out, {path.name for path in (photos, new_photos, dataset, run_dir, predictions)})
    progress = not args.quiet
    started = time.perf_counter()

    print(f"[1/4] composing {args.per_class} photos per class into {photos}/ and {args.new * 2} new ones into {new_photos}/")
    labelled = write_demo_photos(photos, args.per_class, seed=args.seed)
    new_paths = sorted(write_demo_photos(new_photos, args.new, seed=args.seed + 1000, by_class=False))

    print(f"[2/4] detcrop crop {photos} --out {dataset}")
    crop_config = CropConfig()
    detector = load_configured_detector(crop_config.detector, crop_config.runtime)
    crop_summary = crop_photos(photos, dataset, crop_config, detector=detector, progress=progress)

    print(f"[3/4] detcrop train {dataset} --out {run_dir}")
    result = train(dataset, run_dir, make_train_config({"seed": args.seed}), progress=progress)

    print(f"[4/4] detcrop predict {run_dir} {new_photos} --json {predictions}/predictions.json "
          f"--csv {predictions}/predictions.csv --plot {predictions}/plots")
    scorer = Scorer.load(run_dir)
    results = score_photos(scorer, new_paths, predictions / "plots", predictions / "predictions.json",
                           predictions / "predictions.csv", str(run_dir), progress=progress)
    print(format_table(results))
    print()
    print(format_demo_summary(
        DemoPaths(photos, new_photos, dataset, run_dir, predictions), photos_made=len(labelled),
        crop_summary=crop_summary, metrics=result.metrics, results=results,
        seconds=time.perf_counter() - started))
    return 0


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo writes each of its outputs, all inside --out."""

    photos: Path
    new_photos: Path
    dataset: Path
    run_dir: Path
    predictions: Path


def format_demo_summary(paths: DemoPaths, photos_made: int, crop_summary, metrics: dict, results,
                        seconds: float) -> str:
    """The demo's closing summary: each stage's output folder with its key figures, and the total time.

    `crop_summary`: the crop job's `CropSummary`; `metrics`: the run's val metrics (accuracy,
    macro_f1, samples); `results`: the `PhotoResult` of each new photo.
    """
    from detcrop.pipeline.commands.crop import crop_figures
    from detcrop.pipeline.batch_predict import record_of, summarise
    from detcrop.pipeline.commands.predict import predict_figures
    from detcrop.pipeline.console import format_duration, format_summary

    right = sum(result.top_class() == Path(result.path).name.split("_")[0] for result in results)
    rows = [
        ("photos", f"{paths.photos}/ ({photos_made} labelled), {paths.new_photos}/ ({len(results)} new)"),
        ("dataset", f"{paths.dataset}/: {crop_figures(crop_summary)}"),
        ("run", f"{paths.run_dir}/: val accuracy {metrics['accuracy']:.3f}, macro F1 {metrics['macro_f1']:.3f} "
                f"({metrics.get('samples', '?')} val images); model.keras, bundle.json, reports"),
        ("predictions", f"{paths.predictions}/: {predict_figures(summarise(map(record_of, results), []))}; JSON, CSV, plots/"),
        ("true style", f"{right} of {len(results)} new photos (the first word of each file name)"),
    ]
    return format_summary(f"demo done in {format_duration(seconds)}", rows)


def _check_demo_folder(out: Path, demo_entries: set[str]) -> None:
    """Refuse an --out holding anything an earlier demo did not write (the demo writes into it)."""
    from detcrop.data.outputs import OutputPathError, check_output_path

    check_output_path(out, "--out", kind="folder")
    if not out.is_dir():
        return
    foreign = sorted(entry.name for entry in out.iterdir() if entry.name not in demo_entries)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputPathError(f"--out {out} holds {shown}, which the demo did not write; the demo writes "
                              f"{', '.join(sorted(demo_entries))} into it: choose a new folder")

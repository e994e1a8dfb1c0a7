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
    from detcrop.classify.reports import format_summary
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
    write_demo_photos(photos, args.per_class, seed=args.seed)
    new_paths = sorted(write_demo_photos(new_photos, args.new, seed=args.seed + 1000, by_class=False))

    print(f"[2/4] detcrop crop {photos} --out {dataset}")
    crop_config = CropConfig()
    detector = load_configured_detector(crop_config.detector, crop_config.runtime)
    summary = crop_photos(photos, dataset, crop_config, detector=detector, progress=progress)
    print(f"      photos {summary.photos_seen}, cropped {summary.cropped}, empty {summary.empty}, failed {summary.failed}")

    print(f"[3/4] detcrop train {dataset} --out {run_dir}")
    result = train(dataset, run_dir, make_train_config({"seed": args.seed}), progress=progress)
    print(format_summary(result.metrics))

    print(f"[4/4] detcrop predict {run_dir} {new_photos} --json {predictions}/predictions.json "
          f"--csv {predictions}/predictions.csv --plot {predictions}/plots")
    scorer = Scorer.load(run_dir)
    results = score_photos(scorer, new_paths, predictions / "plots", predictions / "predictions.json",
                           predictions / "predictions.csv", str(run_dir), progress=False)
    print(format_table(results))
    right = sum(result.top_class() == Path(result.path).name.split("_")[0] for result in results)
    print(f"\nnew photos classified as their true style: {right} of {len(results)} "
          f"(the style is the first word of each file name)")
    print(f"\ndone in {time.perf_counter() - started:.0f} s. Where things are:")
    for label, path in (("demo photos", photos), ("cropped dataset + manifest.jsonl", dataset),
                        ("run (model.keras, bundle.json, reports, plots)", run_dir),
                        ("predictions (JSON, CSV, plots/)", predictions)):
        print(f"  {label:<48} {path}/")
    return 0



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

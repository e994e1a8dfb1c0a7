"""`detcrop evaluate RUN DATASET`: score a trained bundle on a class-folder dataset."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a trained run's bundle on a class-folder dataset",
        description="Predict every image of DATASET with RUN's bundle and write eval_metrics.json, "
        "eval_classification_report.txt, eval_confusion_matrix.png and eval_mistakes.png into RUN.",
    )
    parser.add_argument("run", help="run folder written by `detcrop train` (model.keras + bundle.json)")
    parser.add_argument("dataset", help="dataset root with one folder per class (classes known to the bundle)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json

    from detcrop.classify.evaluation import evaluate
    from detcrop.classify.reports import format_summary

    result = evaluate(args.run, args.dataset, batch_size=args.batch_size, progress=not (args.quiet or args.json))
    if args.json:
        print(json.dumps(result.metrics, indent=2, ensure_ascii=False))
        return 0
    print(format_summary(result.metrics))
    if result.metrics["skipped"]:
        print(f"\nskipped {len(result.metrics['skipped'])} files (listed in {result.report_paths['metrics']})")
    print(f"\nreports in {args.run}: " + ", ".join(path.name for path in result.report_paths.values()))
    return 0

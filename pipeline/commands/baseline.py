"""`detcrop baseline`: a small CNN trained from scratch, the model to compare against."""

from __future__ import annotations

import argparse
from pathlib import Path

from detcrop.data.config import add_config_arguments, build_config, config_overrides

#: Shorter or older spellings of BaselineConfig flags; the same as `detcrop train`'s.
FLAG_ALIASES = {"learning_rate": ["--lr"], "input_size": ["--image-size"]}
#: Where a run goes when --out is not given: runs/baseline-<dataset>-<recipe>.
DEFAULT_RUNS_DIR = Path("runs")


def register(subparsers: argparse._SubParsersAction) -> None:
    # Defaults are read from the config dataclass without importing TensorFlow.
    from detcrop.classify.baseline.recipes import RECIPES, BaselineConfig

    parser = subparsers.add_parser(
        "baseline",
        help="train a small CNN from scratch (CIFAR-10, Fashion-MNIST or class folders)",
        description="Train the classic small CNN from scratch and write reports and a model bundle that "
        "`predict --no-detect` can use. Recipes: "
        + "; ".join(f"{name}: {recipe.description}" for name, recipe in RECIPES.items()) + ".",
    )
    parser.add_argument("--out", default=None, help="run folder (default runs/baseline-<dataset>-<recipe>)")
    add_config_arguments(parser, BaselineConfig, FLAG_ALIASES)
    parser.set_defaults(handler=run)


def _default_run_dir(dataset: str, recipe: str) -> Path:
    name = Path(dataset).name if dataset not in ("cifar10", "fashion-mnist") else dataset
    return DEFAULT_RUNS_DIR / f"baseline-{name or 'dataset'}-{recipe}"


def run(args: argparse.Namespace) -> int:
    from detcrop.classify.baseline.recipes import BaselineConfig
    from detcrop.classify.baseline.training import run_baseline
    from detcrop.classify.reports import format_summary
    from detcrop.data.outputs import check_output_path

    config = build_config(BaselineConfig, config_overrides(args, BaselineConfig))
    run_dir = Path(args.out) if args.out else _default_run_dir(config.dataset, config.recipe)
    folder_dataset = config.dataset if Path(config.dataset).exists() else None  # else a built-in name
    check_output_path(run_dir, "--out", protected=[("the --data-dir folder", config.data_dir or None),
                                                ("the --dataset folder", folder_dataset)], kind="folder")
    summary = run_baseline(config, run_dir, progress=not args.quiet)
    training = summary["training"]
    skipped = training["skipped"]
    if skipped:
        print(f"skipped {len(skipped)} files:")
        for item in skipped[:10]:
            print(f"  {item['path']}: {item['reason']}")
        if len(skipped) > 10:
            print(f"  ... and {len(skipped) - 10} more (training_log.json)")
    print(format_summary(summary["metrics"]))
    print()
    print(
        f"recipe {training['recipe']}: {training['params']:,} params, {training['train_images']} train images, "
        f"{len(training['epochs'])} epochs in {training['train_seconds']:.1f} s "
        f"({training['samples_per_second']:.0f} samples/s)"
    )
    print(f"run folder: {summary['run_dir']} (bundle, metrics.json, confusion_matrix.png, curves.png)")
    return 0

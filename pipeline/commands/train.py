"""`detcrop train DATASET --out RUN`: transfer learning on a class-folder dataset into a model bundle."""

from __future__ import annotations

import argparse

from detcrop.data.config import add_config_arguments, config_overrides, read_json_object
from detcrop.pipeline.cli import add_engine_arguments

#: Older or shorter spellings of TrainConfig flags (every field is also ``--field-name``); not listed in --help.
FLAG_ALIASES = {
    "learning_rate": ["--lr"], "input_size": ["--image-size"],
    "fine_tune_learning_rate": ["--fine-tune-lr"], "tta_flip": ["--no-tta"],
    "partial_learning_rate": ["--partial-lr"],
}


def register(subparsers: argparse._SubParsersAction) -> None:
    from detcrop.classify.config import CLI_FLAGS, PRESETS, TrainConfig

    parser = subparsers.add_parser(
        "train",
        help="train a classifier on a class-folder dataset (ROOT/<class>/<image>)",
        description="Trains a head on cached features of a frozen pretrained base, then fine-tunes as --fine-tune "
        "says. Writes a model bundle (model.keras + bundle.json), reports and history into --out. Every "
        "TrainConfig key can be set with --config (docs/train-options.md); --help lists the common ones.",
    )
    parser.add_argument("dataset", help="dataset root with one folder per class")
    parser.add_argument("--out", required=True, help="run folder for the bundle and the reports")
    parser.add_argument("--preset", default="default", metavar="{" + ",".join(PRESETS) + "}",
                        help="recipe: fast = frozen base + head, one model; default = partial fine-tuning, two "
                        "models; page = the web page's; flags and --config override it")
    parser.add_argument("--config", metavar="JSON", help="file of TrainConfig keys (e.g. a run's config.json); "
                        "flags override it")
    add_config_arguments(parser, TrainConfig, FLAG_ALIASES, shown=CLI_FLAGS)
    add_engine_arguments(parser, "the frozen base's feature pass on Ray Data (filling the same feature cache; "
                         "the rest of training runs here)", "backbone")
    parser.set_defaults(handler=run)


def _overrides(args: argparse.Namespace) -> dict:
    from detcrop.classify.config import TrainConfig

    overrides = read_json_object(args.config, "train settings") if args.config else {}
    return overrides | config_overrides(args, TrainConfig)


def run(args: argparse.Namespace) -> int:
    from detcrop.classify.reports import format_summary
    from detcrop.classify.training import make_train_config, train
    from detcrop.pipeline.cli import ray_settings

    config = make_train_config(_overrides(args), preset=args.preset)
    result = train(args.dataset, args.out, config, progress=not args.quiet, ray=ray_settings(args))
    print(format_summary(result.metrics))
    print()
    timings = ", ".join(f"{key} {value:.1f}s" for key, value in result.timings.items())
    cache = result.metrics["feature_cache"]
    print(f"{config.backbone} at {config.input_size}px: {result.metrics['train_images']} train / "
          f"{result.metrics['val_images']} val images; features computed {cache['computed']}, cached {cache['cached']}")
    print(f"time: {timings}")
    if result.metrics.get("refit"):
        print(f"refit: {', '.join(result.metrics['refit'])} trained again on train + val for the bundle (same "
              "recipe, last epoch); the val figures above are from the run before, which val could judge")
    if result.skipped:
        print(f"skipped {len(result.skipped)} files (listed in metrics.json), e.g. {result.skipped[0][0]}: "
              f"{result.skipped[0][1]}")
    print(f"bundle and reports in {result.run_dir}")
    return 0

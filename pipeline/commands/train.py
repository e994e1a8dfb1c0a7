"""`detcrop train DATASET --out RUN`: transfer learning on a class-folder dataset into a model bundle."""

from __future__ import annotations

import argparse

from detcrop.data.config import read_json_object

#: CLI flag -> TrainConfig key (flags left out keep the config file's or the default value).
_FLAG_KEYS = {
    "backbone": "backbone", "weights": "weights", "epochs": "epochs", "batch_size": "batch_size",
    "lr": "learning_rate", "val_ratio": "val_ratio", "image_size": "input_size", "seed": "seed",
    "fine_tune": "fine_tune_layers", "fine_tune_epochs": "fine_tune_epochs",
    "fine_tune_lr": "fine_tune_learning_rate", "cache_dir": "cache_dir", "dropout": "dropout", "hidden_units": "hidden_units",
    "patience": "patience",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    from detcrop.classify.training import TrainConfig

    defaults = TrainConfig()
    parser = subparsers.add_parser(
        "train",
        help="train a classifier on a class-folder dataset (ROOT/<class>/<image>)",
        description="Phase 1 trains a head on cached features of a frozen pretrained base; "
        "--fine-tune N then unfreezes the top N base layers. Writes a model bundle "
        "(model.keras + bundle.json), reports and history into --out. Rerun the same command "
        "to resume an interrupted fine-tuning.",
    )
    parser.add_argument("dataset", help="dataset root with one folder per class")
    parser.add_argument("--out", required=True, help="run folder for the bundle and the reports")
    parser.add_argument("--backbone", help=f"efficientnet-lite0 (offline), densenet121, mobilenetv2 or scratch "
                        f"(default {defaults.backbone})")
    parser.add_argument("--weights", help="'imagenet' (download), 'package' (Lite0), 'none', or a local weights "
                        "file (default: the backbone's own)")
    parser.add_argument("--epochs", type=int, help=f"most head epochs (default {defaults.epochs}; early stopping)")
    parser.add_argument("--batch-size", type=int, help=f"images per step (default {defaults.batch_size})")
    parser.add_argument("--lr", type=float, help=f"head learning rate (default {defaults.learning_rate})")
    parser.add_argument("--val-ratio", type=float, help=f"share held out per class (default {defaults.val_ratio})")
    parser.add_argument("--image-size", type=int, help=f"input side in pixels (default {defaults.input_size})")
    parser.add_argument("--seed", type=int, help=f"split and init seed (default {defaults.seed})")
    parser.add_argument("--fine-tune", type=int, metavar="N",
                        help="unfreeze the top N weighted base layers for phase 2 (default 0 = off)")
    parser.add_argument("--fine-tune-epochs", type=int, help=f"phase-2 epochs (default {defaults.fine_tune_epochs})")
    parser.add_argument("--fine-tune-lr", type=float,
                        help=f"phase-2 learning rate (default {defaults.fine_tune_learning_rate})")
    parser.add_argument("--dropout", type=float, help=f"head dropout (default {defaults.dropout})")
    parser.add_argument("--hidden-units", type=int, help=f"head hidden width, 0 = linear (default {defaults.hidden_units})")
    parser.add_argument("--patience", type=int, help=f"early-stopping patience (default {defaults.patience})")
    parser.add_argument("--cache-dir", help="feature cache folder (default ~/.cache/detcrop/features)")
    parser.add_argument("--no-tta", action="store_true", help="no flip test-time augmentation")
    parser.add_argument("--config", metavar="JSON", help="file of TrainConfig keys (e.g. a run's config.json); "
                        "flags override it")
    parser.set_defaults(handler=run)


def _overrides(args: argparse.Namespace) -> dict:
    overrides: dict = {}
    if args.config:
        overrides = read_json_object(args.config, "train settings")
    for flag, key in _FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    if args.no_tta:
        overrides["tta_flip"] = False
    return overrides


def run(args: argparse.Namespace) -> int:
    from detcrop.classify.reports import format_summary
    from detcrop.classify.training import make_train_config, train

    config = make_train_config(_overrides(args))
    result = train(args.dataset, args.out, config, progress=not args.quiet)
    print(format_summary(result.metrics))
    print()
    timings = ", ".join(f"{key} {value:.1f}s" for key, value in result.timings.items())
    cache = result.metrics["feature_cache"]
    print(f"{config.backbone} at {config.input_size}px: {result.metrics['train_images']} train / "
          f"{result.metrics['val_images']} val images; features computed {cache['computed']}, cached {cache['cached']}")
    print(f"time: {timings}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} files (listed in metrics.json), e.g. {result.skipped[0][0]}: "
              f"{result.skipped[0][1]}")
    print(f"bundle and reports in {result.run_dir}")
    return 0

"""Partial fine-tuning recipes compared on `train`'s own val split (the data choices are made on).

`watches_holdout.py` measures a whole `train` run end to end on held-back photos; this script
answers the cheaper question that comes first: which partial fine-tuning settings to try
there. It loads one training folder the way `train` does (same split, same activation cache),
trains the frozen head once, then runs each recipe's partial fine-tuning from that same head
and prints its val accuracy and macro F1 (flip TTA, as `train` reports them) and val accuracy
per epoch. Nothing here touches the held-back photos, so its figures may guide a choice.

    # the train side of the held-back split, as watches_holdout.py builds it:
    .venv/bin/python benchmarks/watches_holdout.py --crops /tmp/wb/crops --out /tmp/ho/x -- --ensemble ''
    .venv/bin/python benchmarks/partial_recipes.py /tmp/ho/x/train \
        '{"8 epochs": {}, "12 epochs": {"epochs": 12}, "lr 3e-4": {"learning_rate": 3e-4}}'

A recipe is a name and `PartialSettings` overrides (epochs, learning_rate, shift, batch_size); two
switches are not settings: ``"head": "fresh"`` starts from an untrained head instead of the
trained one, ``"flips": false`` trains and validates without the mirrored maps.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as the detcrop command sets it


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="class-folder training set (what `detcrop train` would get)")
    parser.add_argument("recipes", help='JSON object: name -> PartialSettings overrides, e.g. {"12 epochs": {"epochs": 12}}')
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--cache-dir", default="", help="as `detcrop train --cache-dir` ('' = ~/.cache/detcrop)")
    parser.add_argument("--results", default="", help="append one JSON line per recipe to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from sklearn.metrics import f1_score

    from detcrop.classify import training
    from detcrop.classify.fitting import EpochLog
    from detcrop.classify.strategies import partial as partial_finetune

    config = training.make_train_config({"backbone": args.backbone, "input_size": args.input_size,
                                         "cache_dir": args.cache_dir, "ensemble": ""})
    train_from = training.resolve_train_from(config)
    if not train_from:
        parser.error(f"{args.backbone} has no partial fine-tuning cut")
    examples, class_names, _ = training.split_examples(Path(args.dataset), config)
    extractor = training.build_extractor(config)
    examples, features, _, _, maps = training.compute_features(examples, extractor, config, progress=True)
    classes, val_y = len(class_names), examples.labels[examples.val]
    upper = partial_finetune.split_at(extractor.base, train_from)[1]
    tick = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:  # fit_head writes its history and TensorBoard logs there
        head = training.fit_head(config, examples, features, classes, Path(scratch), {})
    head_seconds = time.perf_counter() - tick
    start = partial_finetune.trained_weights(upper, head)  # every recipe starts from the same base and head
    untrained_head = training.build_head(features["orig"].shape[1], classes, config.dropout, config.seed,
                                         config.hidden_units).get_weights()

    rows = []
    for name, recipe in json.loads(args.recipes).items():
        recipe = dict(recipe)
        fresh, flips = recipe.pop("head", "trained") == "fresh", recipe.pop("flips", True)
        partial_finetune.restore_weights(upper, head, (start[0], untrained_head if fresh else start[1]))
        settings = replace(partial_finetune.PartialSettings(train_from=train_from, epochs=config.partial_epochs,
                                                            learning_rate=config.partial_learning_rate,
                                                            shift=config.partial_shift), **recipe)
        views = maps if flips else {"orig": maps["orig"], "flip": maps["orig"]}
        tick = time.perf_counter()
        history: dict[str, list] = {}
        result = partial_finetune.partial_fine_tune(upper, head, settings, views, examples.labels, examples.train,
                                                    examples.val, classes, tta_flip=True,
                                                    callbacks=[EpochLog(history, None, "partial").callback()])
        predicted = result.val_probabilities.argmax(1)
        rows.append({"recipe": name, "settings": recipe, "fresh_head": fresh, "flips": flips,
                     "backbone": args.backbone, "input_size": args.input_size, "dataset": str(args.dataset),
                     "val_accuracy": float((predicted == val_y).mean()),
                     "val_macro_f1": float(f1_score(val_y, predicted, average="macro")),
                     "kept_epoch": result.best_epoch + 1,
                     "val_accuracy_by_epoch": [round(value, 3) for value in history["val_accuracy"]],
                     "partial_seconds": round(time.perf_counter() - tick, 1), "head_seconds": round(head_seconds, 1)})
        print(json.dumps(rows[-1]), flush=True)
        if args.results:
            with open(args.results, "a", encoding="utf-8") as file:
                file.write(json.dumps(rows[-1]) + "\n")
    print(f"\n{'recipe':<28}{'val acc':>9}{'val F1':>8}{'kept':>6}{'seconds':>9}  val accuracy by epoch")
    for row in rows:
        print(f"{row['recipe'][:27]:<28}{row['val_accuracy']:>9.3f}{row['val_macro_f1']:>8.3f}{row['kept_epoch']:>6}"
              f"{row['partial_seconds']:>9.0f}  {' '.join(f'{value:.2f}' for value in row['val_accuracy_by_epoch'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Heads on cached `dinov2-small` features: does the head need its input standardized?

    .venv/bin/python benchmarks/vit_head_probe.py --split RUN/split.json --cache CACHE/dinov2-small-224px-<digest>

RUN is a `detcrop train --backbone dinov2-small` run (its split.json names the train and val
crops); CACHE its feature cache folder (every crop and its mirror cached). Each head is the
product's (`build_head`, 512 hidden units, `compile_classifier`, `class_weights`) and trains as
`fit_head` does (Adam 1e-3, label smoothing 0.1, class weights, batch 32, at most 60 epochs,
early stopping on val loss with patience 8, the rate halved after 4, train features and their
mirrors) and is scored on val, flip-averaged. Variants: the input as it is, standardized with
the train split's mean and spread, layer-normalized, and lower dropout. A logistic regression
(scikit-learn) on the same features is the reference. Results: benchmarks/RESULTS.md#vit-head.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", required=True, help="a dinov2-small run's split.json")
    parser.add_argument("--cache", required=True, help="its feature cache folder")
    args = parser.parse_args()

    import keras
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    from detcrop.classify.fitting import class_weights, compile_classifier
    from detcrop.classify.model import build_head
    from detcrop.data.images import file_sha256

    split, cache = json.loads(Path(args.split).read_text()), Path(args.cache)
    names = sorted({Path(path).parent.name for path in split["train"]})

    def features(paths: list[str], variant: str) -> np.ndarray:
        suffix = ".npy" if variant == "orig" else f".{variant}.npy"
        return np.stack([np.load(cache / f"{file_sha256(path)}{suffix}").reshape(-1) for path in paths])

    def labels(paths: list[str]) -> np.ndarray:
        return np.array([names.index(Path(path).parent.name) for path in paths])

    train_y, val_y = labels(split["train"]), labels(split["val"])
    train_x = np.concatenate([features(split["train"], "orig"), features(split["train"], "flip")])
    train_y = np.concatenate([train_y, train_y])
    val_x, val_flip = features(split["val"], "orig"), features(split["val"], "flip")
    weights = class_weights(train_y, len(names))

    def macro_f1(probabilities: np.ndarray) -> float:
        return f1_score(val_y, probabilities.argmax(1), average="macro")

    regression = LogisticRegression(max_iter=2000).fit(train_x, train_y)
    print(f"{'logistic regression (reference)':<44} val F1 "
          f"{macro_f1(regression.predict_proba(val_x) + regression.predict_proba(val_flip)):.3f}")
    for norm, dropout in (("none", 0.5), ("standardize", 0.5), ("layernorm", 0.5), ("none", 0.1),
                          ("standardize", 0.2)):
        keras.utils.set_random_seed(0)
        head = build_head(train_x.shape[1], len(names), dropout, seed=0, hidden_units=512,
                          standardize=train_x if norm == "standardize" else None)
        if norm == "layernorm":
            head = keras.Sequential([keras.Input((train_x.shape[1],)), keras.layers.LayerNormalization(), head])
        compile_classifier(head, 1e-3, label_smoothing=0.1)
        history = head.fit(
            train_x, keras.utils.to_categorical(train_y, len(names)), batch_size=32, epochs=60, verbose=0,
            class_weight=weights, validation_data=(val_x, keras.utils.to_categorical(val_y, len(names))),
            callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=8, restore_best_weights=True),
                       keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=4)]).history
        probabilities = head.predict(val_x, verbose=0) + head.predict(val_flip, verbose=0)
        print(f"{f'head, input {norm}, dropout {dropout}':<44} val F1 {macro_f1(probabilities):.3f}  "
              f"(epochs {len(history['loss'])}, last train accuracy {history['accuracy'][-1]:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

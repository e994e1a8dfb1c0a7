"""Cached features vs re-running the frozen base every epoch, on ../shared/data/watches-brands.

Prints a table:
- feature throughput of `classify.features.extract_features` (decode + resize + base + pool
  + cache write, fresh cache) beside the raw forward throughput of the base on random tensors;
- head training time on cached features beside the same epochs of the seed recipe (the
  composed model with the frozen base, fed images every epoch), with the val macro F1 of each.

Both recipes train the same head (same init, no dropout, same epochs, same batch order,
no flip augmentation), so their F1 should agree within noise.

    python benchmarks/bench_train.py --per-class 24 --epochs 5
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "watches-brands"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--per-class", type=int, default=24, help="images per class used (0 = all)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import keras

    from detcrop.classify.bundle import resize_images
    from detcrop.classify.features import FeatureCache, build_feature_model, extract_features
    from detcrop.classify.reports import evaluate_predictions
    from detcrop.classify.model import build_head, compose_model
    from detcrop.data.folders import scan_class_folders
    from detcrop.data.images import file_sha256, load_image_array
    from detcrop.data.splits import split_class_folders

    data = Path(args.data)
    if not data.is_dir():
        print(f"no dataset at {data}; pass --data", file=sys.stderr)
        return 2
    dataset = scan_class_folders(data)
    samples = [s for name in dataset.class_names for s in [x for x in dataset.samples if x.label == name]
               [: args.per_class or None]]
    paths = [s.path for s in samples]
    labels = np.array([s.label_index for s in samples])
    hashes = [file_sha256(p) for p in paths]
    classes = len(dataset.class_names)
    subset = type(dataset)(dataset.root, dataset.class_names, tuple(samples))
    split = split_class_folders(subset, 0.2, seed=0, sha256_by_path=dict(zip(map(str, paths), hashes)))
    train_idx, val_idx = np.array(split.train), np.array(split.val)

    feature_model, source, base, preprocessing = build_feature_model(args.backbone, args.size)
    rows = []

    # Raw forward throughput of the feature model on random tensors (no decode, no cache).
    batch = np.random.default_rng(0).uniform(0, 255, (args.batch_size, args.size, args.size, 3)).astype("float32")
    feature_model(batch[:2], training=False)
    tick = time.perf_counter()
    repeats = max(2, 128 // args.batch_size)
    for _ in range(repeats):
        feature_model(batch, training=False)
    raw = repeats * args.batch_size / (time.perf_counter() - tick)
    rows.append(("base forward, random tensors", f"{raw:.1f} img/s", ""))

    with tempfile.TemporaryDirectory() as cache_dir:
        cache = FeatureCache(cache_dir, args.backbone, args.size, source)
        tick = time.perf_counter()
        result = extract_features(paths, hashes, feature_model, cache, args.size, ("orig",), args.batch_size, False)
        feature_seconds = time.perf_counter() - tick
        rows.append(("extract_features (decode+resize+base+cache)", f"{len(paths) / feature_seconds:.1f} img/s",
                     f"{feature_seconds:.1f}s for {len(paths)}"))
        tick = time.perf_counter()
        extract_features(paths, hashes, feature_model, cache, args.size, ("orig",), args.batch_size, False)
        rows.append(("extract_features, second run (cache hits)",
                     f"{len(paths) / (time.perf_counter() - tick):.0f} img/s", ""))
    features = result.features["orig"]
    y_train = keras.utils.to_categorical(labels[train_idx], classes)

    def compiled(model):
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy",
                      metrics=[keras.metrics.CategoricalAccuracy(name="acc")])
        return model

    # Recipe A: head on cached features.
    head = compiled(build_head(features.shape[1], classes, 0.0, seed=0))
    tick = time.perf_counter()
    head.fit(features[train_idx], y_train, epochs=args.epochs, batch_size=args.batch_size, shuffle=False, verbose=0)
    cached_seconds = time.perf_counter() - tick
    cached_probabilities = np.asarray(head(features[val_idx], training=False))
    cached_f1 = evaluate_predictions(labels[val_idx], cached_probabilities, dataset.class_names)["macro_f1"]

    # Recipe B (the seed recipe): frozen base inside the model, images every epoch.
    images = resize_images([load_image_array(p) for p in paths], args.size)
    seed_head = build_head(features.shape[1], classes, 0.0, seed=0)
    model = compiled(compose_model(args.size, preprocessing, base, seed_head))
    tick = time.perf_counter()
    model.fit(images[train_idx], y_train, epochs=args.epochs, batch_size=args.batch_size, shuffle=False, verbose=0)
    seed_seconds = time.perf_counter() - tick
    seed_probabilities = np.asarray(model.predict(images[val_idx], batch_size=args.batch_size, verbose=0))
    seed_f1 = evaluate_predictions(labels[val_idx], seed_probabilities, dataset.class_names)["macro_f1"]

    rows.append((f"head, cached features ({args.epochs} epochs)", f"{cached_seconds:.2f}s",
                 f"val macro F1 {cached_f1:.4f}"))
    rows.append(("head, cached incl. feature pass", f"{cached_seconds + feature_seconds:.1f}s",
                 f"{(cached_seconds + feature_seconds) / seed_seconds:.3f} of seed recipe"))
    rows.append((f"seed recipe: frozen base every epoch ({args.epochs} epochs)", f"{seed_seconds:.1f}s",
                 f"val macro F1 {seed_f1:.4f}"))
    rows.append(("cached / seed (head time)", f"{cached_seconds / seed_seconds:.4f}",
                 f"F1 difference {abs(cached_f1 - seed_f1):.4f}"))

    print(f"\n{args.backbone} at {args.size}px, {len(paths)} images ({len(train_idx)} train / {len(val_idx)} val), "
          f"{os.cpu_count()} CPUs, TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}")
    width = max(len(row[0]) for row in rows)
    print(f"{'measure':<{width}}  {'value':>12}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>12}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

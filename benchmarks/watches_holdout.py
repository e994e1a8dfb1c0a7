"""Accuracy and macro F1 on a held-back 20% of watches-brands, never seen by training decisions.

`detcrop train` holds out its own validation split for early stopping and the best epoch,
so its reported F1 is slightly optimistic. This script first puts 20% of the photos aside
(grouped, stratified, `--seed`), trains on the other 80% (which `train` splits again into
train/val), and evaluates the bundle on the 20% it never saw:

    .venv/bin/python benchmarks/watches_holdout.py --out /tmp/holdout                    # whole photos
    .venv/bin/python benchmarks/watches_holdout.py --out /tmp/holdout --crops /tmp/wb/crops \\
        -- --fine-tune 60 --fine-tune-epochs 5                                          # detector crops

`--crops DATASET` trains and tests on a crop dataset made from the same photos
(`detcrop crop ../shared/data/watches-brands --out DATASET --on-empty whole-photo`): its
manifest maps every crop to its source photo, so the held-back crops are exactly those of
the held-back photos. Anything after `--` is passed to `detcrop train` as TrainConfig keys
(`--image-size 224` -> input_size=224, `--fine-tune 60` -> fine_tune_layers=60, ...).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_PHOTOS = ROOT.parent / "shared" / "data" / "watches-brands"


def _link_tree(paths: list[Path], labels: list[str], root: Path) -> None:
    for path, label in zip(paths, labels):
        target = root / label / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path.resolve())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", default=str(DEFAULT_PHOTOS))
    parser.add_argument("--crops", help="crop dataset made from --photos by `detcrop crop`")
    parser.add_argument("--out", required=True, help="work folder (replaced)")
    parser.add_argument("--holdout", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args, train_flags = parser.parse_known_args()
    train_flags = [flag for flag in train_flags if flag != "--"]

    from detcrop.classify.evaluation import evaluate
    from detcrop.data.folders import scan_class_folders
    from detcrop.data.images import file_sha256
    from detcrop.data.manifest import MANIFEST_NAME, read_manifest
    from detcrop.data.splits import split_class_folders
    from detcrop.pipeline.cli import build_parser
    from detcrop.pipeline.commands.train import _overrides
    from detcrop.classify.training import make_train_config, train

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    photos = scan_class_folders(args.photos)
    split = split_class_folders(photos, val_ratio=args.holdout, seed=args.seed)
    held_back = {file_sha256(photos.samples[index].path) for index in split.val}
    if args.crops:
        crops_root = Path(args.crops)
        records = [record for record in read_manifest(crops_root / MANIFEST_NAME) if record.path]
        sides = {"train": [r for r in records if r.source_sha256 not in held_back],
                 "test": [r for r in records if r.source_sha256 in held_back]}
        for side, chosen in sides.items():
            _link_tree([crops_root / r.path for r in chosen], [r.label for r in chosen], out / side)
        shutil.copy(crops_root / "crop_config.json", out / "train" / "crop_config.json")
        # Keep the crop-to-photo links so `train` groups its own val split by source photo.
        (out / "train" / MANIFEST_NAME).write_text(
            "".join(r.to_json() + "\n" for r in sides["train"]), encoding="utf-8")
    else:
        for side, indices in (("train", split.train), ("test", split.val)):
            chosen = [photos.samples[index] for index in indices]
            _link_tree([sample.path for sample in chosen], [sample.label for sample in chosen], out / side)

    train_args = build_parser().parse_args(["train", str(out / "train"), "--out", str(out / "run"), *train_flags])
    config = make_train_config(_overrides(train_args))
    result = train(out / "train", out / "run", config, progress=False)
    evaluation = evaluate(out / "run", out / "test", progress=False)
    test = evaluation.metrics
    variant = "crops" if args.crops else "whole photos"
    print(f"{'variant':<14}{'flags':<40}{'val acc':>9}{'val F1':>8}{'test acc':>10}{'test F1':>9}{'test n':>8}")
    print(f"{variant:<14}{' '.join(train_flags) or '(defaults)':<40}{result.metrics['accuracy']:>9.3f}"
          f"{result.metrics['macro_f1']:>8.3f}{test['accuracy']:>10.3f}{test['macro_f1']:>9.3f}"
          f"{test.get('samples', len(split.val)):>8}")
    print(f"timings (s): {result.timings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

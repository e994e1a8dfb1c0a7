"""End to end on a held-back 20% of watches-brands: crop, train, predict the held-back photos.

`detcrop train` holds out its own validation split for early stopping, the kept epoch and the
unknown threshold, so its reported F1 is optimistic. This script first puts 20% of the photos
aside (grouped, stratified, `--seed`), trains on crops of the other 80% (which `train` splits
again into train/val), then runs `predict`'s own scorer (`detcrop.pipeline.scoring.Scorer`:
detect, crop as in training, classify; a photo with no detection scored whole, as the
`--on-empty whole-photo` crops were made) on the held-back photos it never saw:

    .venv/bin/detcrop crop ../shared/data/watches-brands --out /tmp/wb/crops --on-empty whole-photo
    .venv/bin/python benchmarks/watches_holdout.py --crops /tmp/wb/crops --out /tmp/ho                  # defaults
    .venv/bin/python benchmarks/watches_holdout.py --crops /tmp/wb/crops --out /tmp/ho -- --preset fast
    .venv/bin/python benchmarks/watches_holdout.py --crops /tmp/wb/crops --out /tmp/ho -- --train-from block6a

`--views whole` trains on the whole training photos instead of their crops and scores the
held-back photos whole (no detector), the same split either way.

Anything after `--` goes to `detcrop train` as its flags. Per photo, the answer is what
`predict --which-class` prints: the label of its most confident object, `unknown` under the
run's threshold. Accuracy and macro F1 (over the 13 brands) count `unknown` and photos with no
answer as wrong; "top-class" figures ignore the threshold. The detector's output per photo is
cached under ~/.cache/detcrop/detections (it does not depend on the classifier).
Training time is printed as wall time and as process CPU time (user + system): on a machine
shared with other jobs, CPU time / 2 estimates the wall time on a quiet 2-core machine.
A JSON line per run is appended to OUT/../holdout_results.jsonl.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import resource
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = ROOT.parent / "shared" / "data" / "watches-brands"


def _link_tree(paths: list[Path], labels: list[str], root: Path) -> None:
    for path, label in zip(paths, labels):
        target = root / label / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path.resolve())


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CachedDetector:
    """The real detector, with its output per photo cached on disk (keyed by the image bytes)."""

    def __init__(self, detector, folder: Path):
        self.detector, self.name = detector, getattr(detector, "name", "detector")
        self.folder = folder / self.name
        self.folder.mkdir(parents=True, exist_ok=True)

    def detect(self, image: np.ndarray):
        from detcrop.detect.detections import Detections

        key = hashlib.sha256(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()
        path = self.folder / f"{key}.json"
        if path.exists():
            saved = json.loads(path.read_text())
            return Detections(np.asarray(saved["boxes"], np.float32).reshape(-1, 4),
                              np.asarray(saved["scores"], np.float32), np.asarray(saved["class_ids"], np.int64),
                              tuple(saved["class_names"]), tuple(saved["image_size"]))
        found = self.detector.detect(image)
        path.write_text(json.dumps({"boxes": found.boxes_xyxy.tolist(), "scores": found.scores.tolist(),
                                    "class_ids": found.class_ids.tolist(), "class_names": list(found.class_names),
                                    "image_size": list(found.image_size)}))
        return found


def score_held_back(run_dir: Path, samples, cache_root: Path, detect: bool = True) -> dict:
    """Predict every held-back photo with `predict`'s scorer; accuracy and macro F1 per photo."""
    from sklearn.metrics import accuracy_score, f1_score

    from detcrop.pipeline.scoring import UNKNOWN, Scorer

    scorer = Scorer.load(run_dir, detect=detect)
    if detect:
        scorer.detector = CachedDetector(scorer.detector, cache_root)
    truth, answers, top_classes = [], [], []
    errors = no_answer = whole = 0
    started = time.perf_counter()
    for sample in samples:
        result = scorer.score(sample.path)
        truth.append(sample.label)
        errors += result.error is not None
        if not result.objects:
            no_answer += result.error is None
            answers.append("(none)")
            top_classes.append("(none)")
            continue
        best = max(result.objects, key=lambda item: item.top_probability)
        whole += best.region == "whole-photo"
        answers.append(best.label)
        top_classes.append(best.top_class)
    classes = sorted(set(truth))
    answered = np.array([answer not in (UNKNOWN, "(none)") for answer in answers])
    truth_array, answer_array = np.array(truth), np.array(answers)
    return {
        "photos": len(truth), "unreadable": errors, "no_answer": no_answer, "scored_whole": whole,
        "unknown": int(np.sum(answer_array == UNKNOWN)),
        "accuracy": float(accuracy_score(truth, answers)),
        "macro_f1": float(f1_score(truth, answers, labels=classes, average="macro", zero_division=0)),
        "top_class_accuracy": float(accuracy_score(truth, top_classes)),
        "top_class_macro_f1": float(f1_score(truth, top_classes, labels=classes, average="macro", zero_division=0)),
        "coverage": float(answered.mean()),
        "accuracy_answered": float((truth_array[answered] == answer_array[answered]).mean()) if answered.any() else 0.0,
        "predict_seconds": time.perf_counter() - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", default=str(DEFAULT_PHOTOS))
    parser.add_argument("--crops", required=True,
                        help="crop dataset made from --photos by `detcrop crop ... --on-empty whole-photo`")
    parser.add_argument("--out", required=True, help="work folder (replaced)")
    parser.add_argument("--holdout", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default="", help="name of this row in the results file")
    parser.add_argument("--views", choices=("crops", "whole"), default="crops",
                        help="train on the detector crops (default) or on the whole photos (scored whole: no detector)")
    args, train_flags = parser.parse_known_args()
    train_flags = [flag for flag in train_flags if flag != "--"]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from detcrop.classify.training import train
    from detcrop.data.folders import scan_class_folders
    from detcrop.data.images import file_sha256
    from detcrop.data.manifest import MANIFEST_NAME, CropRecord, read_manifest
    from detcrop.data.splits import split_class_folders
    from detcrop.pipeline.cli import build_parser
    from detcrop.pipeline.commands.train import _overrides
    from detcrop.classify.training import make_train_config, resolve_train_from

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    photos = scan_class_folders(args.photos)
    split = split_class_folders(photos, val_ratio=args.holdout, seed=args.seed)
    held_back = {file_sha256(photos.samples[index].path) for index in split.val}
    crops_root = Path(args.crops)
    records = [record for record in read_manifest(crops_root / MANIFEST_NAME) if record.path]
    chosen = [r for r in records if r.source_sha256 not in held_back]
    if args.views == "whole":  # each training photo once, as its own "crop"
        chosen = [CropRecord(source_path=str(sample.path), source_sha256=file_sha256(sample.path), status="cropped",
                             label=photos.class_names[sample.label_index], path=str(Path(sample.path).resolve()))
                  for sample in (photos.samples[index] for index in split.train)]
    _link_tree([crops_root / r.path for r in chosen], [r.label for r in chosen], out / "train")
    if args.views == "whole":  # the manifest names the links, relative to the training folder
        chosen = [replace(r, path=f"{r.label}/{Path(r.path).name}") for r in chosen]
    if args.views == "crops":
        shutil.copy(crops_root / "crop_config.json", out / "train" / "crop_config.json")
    # Keep the crop-to-photo links so `train` groups its own val split by source photo.
    (out / "train" / MANIFEST_NAME).write_text("".join(r.to_json() + "\n" for r in chosen), encoding="utf-8")

    train_args = build_parser().parse_args(["train", str(out / "train"), "--out", str(out / "run"), *train_flags])
    config = make_train_config(_overrides(train_args), preset=train_args.preset)
    cpu, wall = _cpu_seconds(), time.perf_counter()
    result = train(out / "train", out / "run", config, progress=False)
    train_wall, train_cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    cache_root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "detcrop" / "detections"
    test = score_held_back(out / "run", [photos.samples[index] for index in split.val], cache_root,
                           detect=args.views == "crops")
    row = {"label": args.label or " ".join(train_flags) or "(defaults)", "flags": train_flags, "views": args.views,
           "preset": train_args.preset, "backbone": config.backbone, "input_size": config.input_size,
           "train_from": resolve_train_from(config),
           "val_accuracy": result.metrics["accuracy"], "val_macro_f1": result.metrics["macro_f1"],
           "train_wall_s": round(train_wall, 1), "train_cpu_s": round(train_cpu, 1),
           "timings_s": {key: round(value, 1) for key, value in result.timings.items()},
           "load_average": os.getloadavg(), "held_back": test}
    print(f"{'recipe':<44}{'val F1':>8}{'acc':>7}{'F1':>7}{'top F1':>8}{'cover':>7}{'no ans':>7}"
          f"{'train s':>9}{'cpu s':>8}")
    print(f"{row['label'][:43]:<44}{row['val_macro_f1']:>8.3f}{test['accuracy']:>7.3f}{test['macro_f1']:>7.3f}"
          f"{test['top_class_macro_f1']:>8.3f}{test['coverage']:>7.3f}{test['no_answer']:>7}"
          f"{train_wall:>9.0f}{train_cpu:>8.0f}")
    print(json.dumps(row, indent=1))
    with open(out.parent / "holdout_results.jsonl", "a", encoding="utf-8") as file:
        file.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the baseline recipes on Fashion-MNIST: wall time, samples/s, test accuracy and
time to reach the seed recipe's final accuracy.

    python benchmarks/bench_baseline.py                      # full 60k/10k, seed 10 epochs, fast its default
    python benchmarks/bench_baseline.py --limit 5000         # a quick look
    python benchmarks/bench_baseline.py --json bench.json    # also keep the numbers

Set-up: Fashion-MNIST is read from Debian's /usr/share/datasets/fashion-mnist (package
``dataset-fashion-mnist``) or the Keras cache. When neither exists, this script installs the
Debian package if it runs as root with apt-get, and otherwise prints the command and stops.

Train time excludes the per-epoch test evaluation (the test set is only monitored), so the
"time to seed accuracy" column is comparable across recipes. The machine's other load
changes every figure; compare rows from one invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from detcrop.classify.baseline.data import DatasetError, fashion_mnist_candidate_dirs, load_fashion_mnist  # noqa: E402

INSTALL_COMMAND = ["apt-get", "install", "-y", "dataset-fashion-mnist"]


def ensure_fashion_mnist() -> None:
    """Install Debian's dataset-fashion-mnist when no local copy exists and we are root; else explain."""
    if any((folder / "t10k-images-idx3-ubyte.gz").is_file() or (folder / "t10k-images-idx3-ubyte").is_file()
           for folder in fashion_mnist_candidate_dirs()):
        return
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        print("Fashion-MNIST not found; installing:", " ".join(INSTALL_COMMAND), flush=True)
        if subprocess.run(INSTALL_COMMAND).returncode != 0:
            subprocess.run(["apt-get", "update"], check=False)
            subprocess.run(INSTALL_COMMAND, check=True)
        return
    raise SystemExit(
        "Fashion-MNIST not found. Install it with: sudo " + " ".join(INSTALL_COMMAND)
        + " (or put the four IDX files in ~/.keras/datasets/fashion-mnist)"
    )


def bench_recipe(data, recipe: str, epochs: int | None, seed: int) -> dict:
    from detcrop.classify.baseline.recipes import BaselineConfig
    from detcrop.classify.baseline.training import predict_arrays, train_baseline
    from detcrop.data.config import build_config

    overrides = {"recipe": recipe, "seed": seed} | ({"epochs": epochs} if epochs else {})
    config = build_config(BaselineConfig, overrides)
    started = time.perf_counter()
    result = train_baseline(data, config, progress=False)
    wall = time.perf_counter() - started
    probabilities = predict_arrays(result.model, data.x_test)
    accuracy = float((probabilities.argmax(axis=1) == data.y_test).mean())
    return {
        "recipe": recipe,
        "params": int(result.model.count_params()),
        "epochs": result.config.epochs,
        "batch_size": result.config.batch_size,
        "learning_rate": result.config.learning_rate,
        "train_seconds": result.train_seconds,
        "wall_seconds": wall,
        "samples_per_second": result.samples_per_second,
        "test_accuracy": accuracy,
        "per_epoch": [
            {"epoch": record.epoch, "train_seconds": record.train_seconds, "wall_seconds": record.wall_seconds,
             "test_accuracy": record.test_accuracy}
            for record in result.epochs
        ],
    }


def first_at(per_epoch: list[dict], target: float) -> dict | None:
    return next((row for row in per_epoch if row["test_accuracy"] is not None and row["test_accuracy"] >= target), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default="seed,fast", help="comma-separated (default %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="at most N train and N test images")
    parser.add_argument("--seed-epochs", type=int, default=None, help="default: the seed recipe's 10")
    parser.add_argument("--fast-epochs", type=int, default=None, help="default: the fast recipe's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    ensure_fashion_mnist()
    try:
        data = load_fashion_mnist(allow_download=False).subsample(args.limit, args.seed)
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import tensorflow as tf

    print(f"Fashion-MNIST from {data.source}: {len(data.x_train)} train / {len(data.x_test)} test images, "
          f"{os.cpu_count()} CPUs, TF {tf.__version__}, {platform.processor() or platform.machine()}", flush=True)
    results = []
    for recipe in [name.strip() for name in args.recipes.split(",") if name.strip()]:
        epochs = args.seed_epochs if recipe == "seed" else args.fast_epochs
        print(f"training {recipe} ...", flush=True)
        results.append(bench_recipe(data, recipe, epochs, args.seed))

    seed_result = next((result for result in results if result["recipe"] == "seed"), None)
    # The seed's accuracy after its last epoch, as logged by Keras (same float32 measure as the
    # per-epoch values it is compared with).
    target = seed_result["per_epoch"][-1]["test_accuracy"] if seed_result else None
    header = f"{'recipe':<6} {'params':>8} {'epochs':>6} {'batch':>5} {'train s':>8} {'wall s':>7} " \
             f"{'samples/s':>9} {'test acc':>8}  time to seed acc"
    print()
    print(header)
    print("-" * len(header))
    for result in results:
        reached = first_at(result["per_epoch"], target) if target is not None else None
        result["time_to_seed_accuracy"] = reached
        when = f"{reached['train_seconds']:.1f} s (epoch {reached['epoch']})" if reached else "not reached"
        print(f"{result['recipe']:<6} {result['params']:>8,} {result['epochs']:>6} {result['batch_size']:>5} "
              f"{result['train_seconds']:>8.1f} {result['wall_seconds']:>7.1f} {result['samples_per_second']:>9.0f} "
              f"{result['test_accuracy']:>8.4f}  {when if target is not None else '-'}")
    if target is not None:
        print(f"\nseed's final test accuracy (the target): {target:.4f}")
    print("\nper epoch (train s excludes the test evaluation):")
    print(f"{'recipe':<6} {'epoch':>5} {'train s':>8} {'wall s':>7} {'test acc':>8}")
    for result in results:
        for row in result["per_epoch"]:
            print(f"{result['recipe']:<6} {row['epoch']:>5} {row['train_seconds']:>8.1f} {row['wall_seconds']:>7.1f} "
                  f"{row['test_accuracy']:>8.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"target": target, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

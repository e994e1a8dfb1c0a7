"""`detcrop baseline` end to end on a tiny IDX folder, and its refusals."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from detcrop.pipeline.cli import EXIT_USAGE, main


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _tiny_fashion_mnist(root: Path, train: int = 40, test: int = 20) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("t10k", test)):
        labels = np.arange(count) % 10
        images = labels[:, None, None] * 25 + rng.integers(0, 5, (count, 28, 28))
        _write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        _write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


def test_baseline_command_trains_and_writes_a_run(tmp_path, capsys):
    pytest.importorskip("keras")
    data_dir = _tiny_fashion_mnist(tmp_path / "fm")
    run_dir = tmp_path / "run"
    code = main(["baseline", "--dataset", "fashion-mnist", "--data-dir", str(data_dir), "--recipe", "seed",
                 "--epochs", "1", "--batch-size", "16", "--limit", "30", "--out", str(run_dir), "-q"])
    output = capsys.readouterr().out
    assert code == 0
    assert "accuracy" in output and "recipe seed: 93,322 params, 30 train images, 1 epochs" in output
    config = json.loads((run_dir / "config.json").read_text())
    assert config == json.loads(json.dumps(config)) and config["epochs"] == 1 and config["limit"] == 30
    bundle = json.loads((run_dir / "bundle.json").read_text())
    assert bundle["input_size"] == 28 and bundle["class_names"][0] == "T-shirt/top"
    assert bundle["config"]["recipe"] == "seed" and "luma" in bundle["color"]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--dataset", "no_such_dataset"], "cifar10, fashion-mnist or a class-folder path"),
        (["--dataset", "fashion-mnist", "--data-dir", "{tmp}/empty"], "expected IDX files"),
        (["--dataset", "cifar10", "--data-dir", "{tmp}/empty"], "cifar-10-batches-py"),
        (["--epochs", "0"], "epochs must be at least 1"),
        (["--dataset", "{tmp}", "--image-size", "8"], "input_size must be at least 18"),
    ],
)
def test_baseline_command_refuses_bad_input_with_exit_2(tmp_path, monkeypatch, capsys, arguments, message):
    monkeypatch.chdir(tmp_path)
    arguments = [argument.replace("{tmp}", str(tmp_path)) for argument in arguments]
    code = main(["baseline", *arguments, "--out", str(tmp_path / "run"), "-q"])
    assert code == EXIT_USAGE
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "bundle.json").exists()


def test_baseline_command_on_class_folders_reports_skipped_files(tmp_path, capsys):
    pytest.importorskip("keras")
    from imagegen import make_class_folders

    root = make_class_folders(tmp_path / "watches", {"casio": 10, "rolex": 10}, size=24)
    (root / "rolex" / "broken.png").write_bytes(b"\x89PNG but not really")
    code = main(["baseline", "--dataset", str(root), "--image-size", "20", "--recipe", "fast", "--epochs", "1",
                 "--batch-size", "8", "--out", str(tmp_path / "run"), "-q"])
    output = capsys.readouterr().out
    assert code == 0
    assert "skipped 1 files" in output and "broken.png" in output
    log = json.loads((tmp_path / "run" / "training_log.json").read_text())
    assert log["image_shape"] == [20, 20, 3] and log["train_images"] + log["test_images"] == 20
    assert json.loads((tmp_path / "run" / "bundle.json").read_text())["class_names"] == ["casio", "rolex"]

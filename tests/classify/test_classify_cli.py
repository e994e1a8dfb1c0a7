"""`detcrop train` and `detcrop evaluate` from the command line, on a tiny generated dataset."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("keras")

from detcrop.pipeline.cli import main


def _dataset(root, per_class: int = 6):
    rng = np.random.default_rng(1)
    for name, colour in {"dark": 40, "light": 210}.items():
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = np.clip(colour + rng.normal(0, 20, (36, 36, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index}.jpg")
    return root


def test_train_then_evaluate(tmp_path, capsys):
    data = _dataset(tmp_path / "data")
    run = tmp_path / "run"
    code = main(["train", str(data), "--out", str(run), "--backbone", "scratch", "--image-size", "32",
                 "--epochs", "2", "--val-ratio", "0.34", "--cache-dir", str(tmp_path / "cache"), "-q"])
    out = capsys.readouterr().out
    assert code == 0
    assert "accuracy" in out and "macro F1" in out and str(run) in out
    assert json.loads((run / "config.json").read_text())["input_size"] == 32

    (data / "light" / "bad.png").write_bytes(b"")
    assert main(["evaluate", str(run), str(data), "--json", "-q"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["samples"] == 12
    assert [item["path"] for item in metrics["skipped"]] == [str(data / "light" / "bad.png")]
    for name in ("eval_metrics.json", "eval_confusion_matrix.png", "eval_mistakes.png",
                 "eval_classification_report.txt"):
        assert (run / name).stat().st_size > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "{data}", "--out", "{run}", "--backbone", "resnet"], "unknown backbone 'resnet'"),
        (["train", "{data}", "--out", "{run}", "--backbone", "densenet121", "--weights", "{run}/missing.h5"],
         "weights file .*missing.h5 not found"),
        (["train", "{data}/nowhere", "--out", "{run}"], "dataset folder not found"),
        (["evaluate", "{run}", "{data}"], "run folder not found"),
    ],
)
def test_cli_errors_exit_2_with_a_message(tmp_path, capsys, argv, message):
    data = _dataset(tmp_path / "data", per_class=2)
    argv = [part.format(data=data, run=tmp_path / "run") for part in argv]
    assert main(argv + ["-q"]) == 2
    assert re.search(message, capsys.readouterr().err)

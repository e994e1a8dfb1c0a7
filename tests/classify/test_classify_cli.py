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
    data = _dataset(tmp_path / "data", per_class=5)
    argv = [part.format(data=data, run=tmp_path / "run") for part in argv]
    assert main(argv + ["-q"]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_retraining_killed_midway_leaves_a_run_every_command_refuses(tmp_path, capsys, monkeypatch):
    """Issue 10 row 8: the old bundle is never served under the new config.json."""
    import detcrop.classify.training as training

    data = _dataset(tmp_path / "data")
    run = tmp_path / "run"
    train_argv = ["train", str(data), "--out", str(run), "--backbone", "scratch", "--image-size", "32",
                  "--epochs", "2", "--val-ratio", "0.34", "--cache-dir", str(tmp_path / "cache"), "-q"]
    assert main(train_argv) == 0

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies while the head trains

    monkeypatch.setattr(training, "fit_head", killed)
    assert main(train_argv[:-1] + ["--epochs", "3", "-q"]) == 130
    monkeypatch.undo()
    assert json.loads((run / "config.json").read_text())["epochs"] == 3  # new config, old bundle beside it
    capsys.readouterr()
    photo = data / "dark" / "0.jpg"
    for argv in (["predict", str(run), str(photo), "--no-detect"], ["evaluate", str(run), str(data)],
                 ["export", str(run), "--out", str(tmp_path / "export")]):
        assert main(argv + ["-q"]) == 2, argv
        err = capsys.readouterr().err
        assert "incomplete run" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert main(train_argv) == 0  # training again finishes the run
    assert main(["evaluate", str(run), str(data), "-q"]) == 0


@pytest.mark.parametrize("payload", [
    b"cos\nsystem\n(S'touch {marker}'\ntR.",  # a global that would run a shell command
    b"c__builtin__\neval\n(S'open(\"{marker}\", \"w\")'\ntR.",
])
def test_a_weights_file_with_a_malicious_pickle_is_refused_in_one_line(tmp_path, capsys, payload):
    """Issue 10 row 15: a zip-format .pth whose pickle calls a global: one line, exit 2, nothing run."""
    import zipfile

    data = _dataset(tmp_path / "data", per_class=5)
    marker = tmp_path / "owned"
    evil = tmp_path / "evil.pth"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("evil/data.pkl", payload.replace(b"{marker}", str(marker).encode()))
    code = main(["train", str(data), "--out", str(tmp_path / "run"), "--weights", str(evil), "--image-size", "32",
                 "--cache-dir", str(tmp_path / "cache"), "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"{evil}: refused" in err and "refusing global" in err
    assert not marker.exists()


def test_a_second_train_into_a_locked_run_folder_exits_2_naming_the_first(tmp_path, capsys):
    """Issue 10 row 6 for `train`: the run folder is locked while a job writes into it."""
    from detcrop.data.locks import folder_lock

    data = _dataset(tmp_path / "data", per_class=5)
    run = tmp_path / "run"
    argv = ["train", str(data), "--out", str(run), "--backbone", "scratch", "--image-size", "32", "--epochs", "1",
            "--val-ratio", "0.34", "--cache-dir", str(tmp_path / "cache"), "-q"]
    with folder_lock(run, "train"):
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{run} is in use by `train`" in err and len(err.strip().splitlines()) == 1
    assert not (run / "config.json").exists()
    assert main(argv) == 0  # the lock goes with its holder

"""Trust boundaries and file safety (issue 10): what a hostile or careless input must not do.

Each test reproduces one row of the issue's table; every CLI refusal is one line on stderr
with exit code 2, never a traceback.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from detcrop.classify.bundle import save_bundle
from detcrop.data.config import config_to_dict
from detcrop.data.folders import scan_class_folders
from detcrop.detect.crop import CropConfig
from detcrop.detect.detections import Detections
from detcrop.pipeline.cli import main
from imagegen import save_image
from tiny_models import tiny_model


class WholeImageDetector:
    """A fake detector that finds one COCO clock filling the image."""

    name = "whole-image"

    def detect(self, image: np.ndarray) -> Detections:
        height, width = image.shape[:2]
        return Detections(boxes_xyxy=np.array([[0, 0, width, height]], np.float32), scores=np.array([0.9], np.float32),
                          class_ids=np.array([85]), class_names=("clock",), image_size=(width, height))


def make_run(run, detector: str | None = "ssd-mobilenet-v2"):
    """A tiny two-class bundle in `run` whose crop_config names `detector`."""
    crop_config = config_to_dict(CropConfig(min_size=8))
    if detector is not None:
        crop_config["detector"] = detector
    save_bundle(run, tiny_model(), {
        "class_names": ["a", "b"], "input_size": 16, "backbone": "test", "weights_source": "fixed",
        "metrics": {}, "config": {}, "crop_config": crop_config, "unknown_threshold": 0.5,
    })
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture()
def loaded_detectors(monkeypatch):
    """Every name `load_detector` is asked for; it answers with the fake detector."""
    import detcrop.detect.base

    asked = []

    def load_detector(name_or_path="ssd-mobilenet-v2", **kwargs):
        asked.append(str(name_or_path))
        return WholeImageDetector()

    monkeypatch.setattr(detcrop.detect.base, "load_detector", load_detector)
    return asked


def _one_line_refusal(capsys, expected: str) -> str:
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "Traceback" not in error, error
    assert expected in error, error
    return error


# Row 10: class names. The good rows are accepted as they are; the bad ones name the rule.
@pytest.mark.parametrize("name, problem", [
    ("rolex", None),
    ("Grand Seiko", None),
    ("montre-à-gousset", None),
    ("x" * 64, None),
    ("x" * 300, "at most 64 characters"),
    ("\u00e9" * 63 + "\U0001F600", None),
    ("\U0001F600" * 64, "bytes in UTF-8"),
    ("a\nb", "control character"),
    ("tab\there", "control character"),
    ("nul\x00", "control character"),
    ("rtl\u202eoverride", "control character"),
    ("   ", "blank"),
    ("a:b", "separators"),
    ("", "empty"),
    (" rolex", "leading or trailing spaces"),
    ("../evil", "start with '.'"),
    ("a/evil", "path separators"),
    ("/abs/path", "path separators"),
    ("a\\b", "path separators"),
    (".hidden", "start with '.'"),
    ("..", "start with '.'"),
    ("a..b", "'..'"),
    ("manifest.jsonl", "dataset root"),
])
def test_class_name_rule(name, problem):
    from detcrop.data.folders import check_class_name

    if problem is None:
        assert check_class_name(name) == name
    else:
        with pytest.raises(ValueError, match=problem):
            check_class_name(name)


@pytest.mark.parametrize("name", ["x" * 300, "two\nlines", "   "])
def test_add_refuses_odd_class_names_in_one_line(tmp_path, capsys, name):
    photo = save_image(tmp_path / "in" / "a.png", seed=1)
    assert main(["add", str(tmp_path / "ds"), name, str(photo), "--size", "16"]) == 2
    _one_line_refusal(capsys, "class name")
    assert not (tmp_path / "ds").exists() or not any((tmp_path / "ds").iterdir())


# Row 11: `add --help` says the dataset and the class are created when missing; they are,
# even when no image could be added (the first thing a beginner does is name a class).
def test_add_creates_a_missing_dataset_folder(tmp_path, capsys):
    broken = tmp_path / "in" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(b"not a jpeg")
    dataset = tmp_path / "new" / "ds"
    assert main(["add", str(dataset), "cats", str(broken)]) == 1
    printed = capsys.readouterr()
    assert "not found" not in printed.err and "added 0" in printed.out
    assert scan_class_folders(dataset).counts() == {"cats": 0}


def test_add_into_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "ds").write_text("not a folder")
    photo = save_image(tmp_path / "in" / "a.png", seed=1)
    assert main(["add", str(tmp_path / "ds"), "cats", str(photo)]) == 2
    _one_line_refusal(capsys, "got a file")


# Row 1: a run folder is data, not code. A detector path or URL in bundle.json (or in a
# crop_config.json given with --config) loads only when the user repeats it with --detector.
UNTRUSTED_DETECTORS = ["/tmp/somewhere/saved_model", "https://example.com/detector/1", "model.pb"]


@pytest.mark.parametrize("saved", UNTRUSTED_DETECTORS)
def test_predict_refuses_a_detector_path_from_the_bundle(tmp_path, capsys, loaded_detectors, saved):
    run = make_run(tmp_path / "run", detector=saved)
    photo = save_image(tmp_path / "photo.png", seed=2)
    assert main(["predict", str(run), str(photo)]) == 2
    _one_line_refusal(capsys, f"--detector {saved}")
    assert loaded_detectors == []


@pytest.mark.parametrize("saved", UNTRUSTED_DETECTORS)
def test_predict_loads_a_bundle_detector_path_the_user_names(tmp_path, capsys, loaded_detectors, saved):
    run = make_run(tmp_path / "run", detector=saved)
    photo = save_image(tmp_path / "photo.png", seed=2)
    assert main(["predict", str(run), str(photo), "--detector", saved]) == 0
    assert loaded_detectors == [saved]


@pytest.mark.parametrize("saved, loaded", [
    ("ssd-mobilenet-v2", "ssd-mobilenet-v2"),
    ("faster-rcnn-resnet50-1024", "faster-rcnn-resnet50-1024"),
    (None, "ssd-mobilenet-v2"),
])
def test_predict_loads_registered_detectors_from_the_bundle(tmp_path, loaded_detectors, saved, loaded):
    run = make_run(tmp_path / "run", detector=saved)
    photo = save_image(tmp_path / "photo.png", seed=2)
    assert main(["predict", str(run), str(photo)]) == 0
    assert loaded_detectors == [loaded]


def test_scorer_without_detection_needs_no_detector(tmp_path, loaded_detectors):
    from detcrop.pipeline.scoring import Scorer

    scorer = Scorer.load(make_run(tmp_path / "run", detector="/tmp/x.pb"), detect=False)
    assert scorer.detector is None and loaded_detectors == []


@pytest.mark.parametrize("saved", UNTRUSTED_DETECTORS)
def test_crop_refuses_a_detector_path_from_a_config_file(tmp_path, capsys, loaded_detectors, saved):
    save_image(tmp_path / "photos" / "a.png", seed=1)
    config = tmp_path / "crop_config.json"
    config.write_text(json.dumps({"detector": saved}))
    assert main(["crop", str(tmp_path / "photos"), "--out", str(tmp_path / "ds"), "--config", str(config)]) == 2
    _one_line_refusal(capsys, f"--detector {saved}")
    assert loaded_detectors == [] and not (tmp_path / "ds").exists()
    argv = ["crop", str(tmp_path / "photos"), "--out", str(tmp_path / "ds"), "--config", str(config), "--detector", saved]
    assert main(argv) == 0
    assert loaded_detectors == [saved]


# Row 7: no output inside, over or around an input, nor in the run folder being scored.
def _predict(run, photos, *flags):
    return ["predict", str(run), *map(str, photos), *map(str, flags)]


OUTPUT_CASES = {
    "predict --json RUN/bundle.json": lambda t: _predict(t.run, [t.photo], "--json", t.run / "bundle.json"),
    "predict --csv RUN/new.csv": lambda t: _predict(t.run, [t.photo], "--csv", t.run / "new.csv"),
    "predict --json over the photo": lambda t: _predict(t.run, [t.photo], "--json", t.photo),
    "predict --plot into the photo folder": lambda t: _predict(t.run, [t.photos], "--plot", t.photos / "plots"),
    "predict --plot around the photos": lambda t: _predict(t.run, [t.photo], "--plot", t.tmp),
    "predict --json and --csv the same file": lambda t: _predict(t.run, [t.photo], "--json", t.tmp / "p",
                                                                 "--csv", t.tmp / "p"),
    "predict --json via a link to RUN/bundle.json": lambda t: _predict(t.run, [t.photo], "--json", t.link),
    "train --out DATASET/cartier": lambda t: ["train", str(t.dataset), "--out", str(t.dataset / "cartier")],
    "train --out DATASET": lambda t: ["train", str(t.dataset), "--out", str(t.dataset)],
    "train --cache-dir DATASET/cache": lambda t: ["train", str(t.dataset), "--out", str(t.tmp / "run2"),
                                                  "--cache-dir", str(t.dataset / "cache")],
    "crop --out around the input": lambda t: ["crop", str(t.photos), "--out", str(t.tmp)],
    "export --out RUN/export": lambda t: ["export", str(t.run), "--out", str(t.run / "export")],
    "evaluate a run inside its dataset": lambda t: ["evaluate", str(t.nested_run), str(t.dataset)],
    "baseline --out inside --dataset": lambda t: ["baseline", "--dataset", str(t.dataset),
                                                  "--out", str(t.dataset / "run")],
    "add the dataset to one of its classes": lambda t: ["add", str(t.dataset), "a", str(t.dataset)],
    "add a class's own image": lambda t: ["add", str(t.dataset), "a", str(t.dataset / "a" / "0.png")],
}


@pytest.fixture()
def layout(tmp_path):
    """A run folder, photos, a dataset with a run inside it, a link to the bundle."""
    from types import SimpleNamespace

    from imagegen import make_class_folders

    run = make_run(tmp_path / "run")
    dataset = make_class_folders(tmp_path / "dataset", {"a": 3, "b": 3})
    photos = tmp_path / "photos"
    photo = save_image(photos / "photo.png", seed=3)
    (tmp_path / "link.json").symlink_to(run / "bundle.json")
    nested_run = make_run(dataset / "b" / "run")
    return SimpleNamespace(tmp=tmp_path, run=run, dataset=dataset, photos=photos, photo=photo,
                           link=tmp_path / "link.json", nested_run=nested_run)


def _snapshot(root):
    return {path: path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("case", list(OUTPUT_CASES))
def test_outputs_inside_or_over_inputs_are_refused(layout, capsys, loaded_detectors, case):
    before = _snapshot(layout.tmp)
    assert main(OUTPUT_CASES[case](layout)) == 2
    _one_line_refusal(capsys, "outside it")
    assert _snapshot(layout.tmp) == before


# Row 2: an export.json in --out is no licence to delete the folder: only what an earlier
# export wrote (listed in its export.json, and only names an export writes) is replaced.
def _forged_export(out, meta, *extra):
    out.mkdir(parents=True)
    (out / "export.json").write_text(json.dumps(meta))
    for name in extra:
        (out / name).write_text("the user's")
    return out


@pytest.mark.parametrize("make_out", [
    lambda out: _forged_export(out, {}, "thesis.txt"),
    lambda out: _forged_export(out, {"files": ["export.json", "thesis.txt"]}, "thesis.txt"),
    lambda out: _forged_export(out, {"model": "thesis.txt"}, "thesis.txt"),
    lambda out: _forged_export(out, {"files": ["export.json", "labels.txt"]}, "labels.txt", "photos"),
], ids=["no file list", "forged file list", "forged model name", "user file beside an export"])
def test_export_replaces_only_what_an_earlier_export_wrote(run_dir, tmp_path, capsys, make_out):
    out = make_out(tmp_path / "out")
    before = _snapshot(out)
    assert main(["export", str(run_dir), "--out", str(out), "--format", "tflite"]) == 2
    _one_line_refusal(capsys, "refusing to replace")
    assert _snapshot(out) == before


def test_export_replaces_an_earlier_export(run_dir, tmp_path):
    from detcrop.classify.export import export_bundle

    out = tmp_path / "out"
    export_bundle(run_dir, out, "savedmodel")
    assert json.loads((out / "export.json").read_text())["files"] == ["export.json", "labels.txt", "saved_model"]
    export_bundle(run_dir, out, "tflite")
    assert sorted(path.name for path in out.iterdir()) == ["export.json", "labels.txt", "model.tflite"]
    assert [path.name for path in tmp_path.iterdir()] == ["out"]  # no staging folder left


# Row 13: a killed export leaves its hidden staging folder; the next export into the same
# --out removes it, but never one that a running export holds.
_KILLED_EXPORT = """
import os, signal, sys
import detcrop.classify.export as export

def write_then_die(model, path, shape):
    path.mkdir(parents=True)
    (path / "half.pb").write_bytes(b"half a model")
    os.kill(os.getpid(), signal.SIGKILL)

export._write_saved_model = write_then_die
export.export_bundle(sys.argv[1], sys.argv[2], "savedmodel")
"""


def test_a_killed_exports_staging_folder_is_removed_by_the_next_export(run_dir, tmp_path):
    import signal
    import subprocess
    import sys

    from detcrop.classify.export import export_bundle

    out = tmp_path / "out"
    killed = subprocess.run([sys.executable, "-c", _KILLED_EXPORT, str(run_dir), str(out)], capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    left = [path for path in tmp_path.iterdir() if path.name.endswith(".part")]
    assert len(left) == 1 and (left[0] / "saved_model" / "half.pb").is_file()
    export_bundle(run_dir, out, "tflite")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_a_staging_folder_in_use_is_kept(tmp_path):
    from detcrop.data.atomic import StagingFolder, remove_stale_staging

    with StagingFolder(tmp_path / "out", "export") as in_use:
        assert in_use.path.name.startswith(".out.detcrop-export-") and in_use.path.name.endswith(".part")
        stale = StagingFolder(tmp_path / "out", "export")
        stale.close()
        lookalike = tmp_path / ".out.someone-else.part"
        lookalike.mkdir()
        assert remove_stale_staging(tmp_path / "out", "export") == [stale.path]
        assert in_use.path.is_dir() and lookalike.is_dir()


# Audit: an output path that exists as the wrong kind of thing is refused in one line,
# before any work; a device or FIFO is never replaced by a file.
KIND_CASES = {
    "predict --json onto a folder": lambda t: _predict(t.run, [t.photo], "--json", t.folder),
    "predict --csv onto a FIFO": lambda t: _predict(t.run, [t.photo], "--csv", t.fifo),
    "predict --plot onto a file": lambda t: _predict(t.run, [t.photo], "--plot", t.file),
    "train --out onto a file": lambda t: ["train", str(t.dataset), "--out", str(t.file)],
    "crop --out onto a file": lambda t: ["crop", str(t.photos), "--out", str(t.file)],
    "baseline --out onto a file": lambda t: ["baseline", "--dataset", str(t.dataset), "--out", str(t.file)],
}


@pytest.mark.parametrize("case", list(KIND_CASES))
def test_outputs_of_the_wrong_kind_are_refused(layout, capsys, loaded_detectors, case):
    import os
    import stat

    layout.folder, layout.file, layout.fifo = layout.tmp / "folder", layout.tmp / "file.txt", layout.tmp / "fifo"
    layout.folder.mkdir()
    layout.file.write_text("the user's")
    os.mkfifo(layout.fifo)
    before = _snapshot(layout.tmp)
    assert main(KIND_CASES[case](layout)) == 2
    _one_line_refusal(capsys, "expected a" if "FIFO" not in case else "not a regular file")
    assert _snapshot(layout.tmp) == before and stat.S_ISFIFO(os.lstat(layout.fifo).st_mode)


# Audit: `demo --out DIR` writes photos, a dataset and a run into DIR; it refuses a folder
# that holds anything an earlier demo did not write, instead of cropping into the user's files.
@pytest.mark.parametrize("entry", ["thesis.txt", ".hidden-notes"])
def test_demo_refuses_a_folder_it_did_not_write(tmp_path, capsys, loaded_detectors, entry):
    out = tmp_path / "project"
    out.mkdir()
    (out / entry).write_text("the user's")
    (out / "dataset").mkdir()
    assert main(["demo", "--out", str(out), "--per-class", "2", "--new", "1"]) == 2
    _one_line_refusal(capsys, "which the demo did not write")
    assert sorted(path.name for path in out.iterdir()) == sorted([entry, "dataset"]) and loaded_detectors == []

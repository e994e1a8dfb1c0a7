"""`detcrop crop` end to end through the CLI, with a real SavedModel detector built here."""

import json

import pytest

from detcrop.data.manifest import MANIFEST_NAME, read_manifest
from detect_helpers import RED, save_red_box_savedmodel, save_scene
from detcrop.pipeline.cli import main


@pytest.fixture(scope="module")
def savedmodel_dir(tmp_path_factory):
    return save_red_box_savedmodel(tmp_path_factory.mktemp("hub") / "red_box_detector")


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    save_scene(root / "seiko" / "one.png", (160, 120), {RED: (40, 30, 100, 90)})
    save_scene(root / "seiko" / "none.png", (100, 100), {})
    save_scene(root / "zenith" / "two.png", (100, 100), {RED: (0, 0, 50, 40)})
    return root


def test_crop_command_writes_dataset_and_resumes(savedmodel_dir, photos, tmp_path, capsys):
    out = tmp_path / "crops"
    argv = ["crop", str(photos), "--out", str(out), "--detector", str(savedmodel_dir), "--target", "clock",
            "--margin", "0", "--square", "pad", "-q"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "3 photos: 2 cropped, 1 empty, 0 failed; 2 crops (seiko: 1, zenith: 1)" in printed
    records = read_manifest(out / MANIFEST_NAME)
    cropped = [record for record in records if record.status == "cropped"]
    assert [record.crop_box for record in cropped] == [(40, 30, 100, 90), (0, -5, 50, 45)]
    assert {record.detector for record in records} == {str(savedmodel_dir)}
    saved = json.loads((out / "crop_config.json").read_text())
    assert saved["square"] == "pad" and saved["margin"] == 0 and saved["targets"] == ["clock"]

    assert main(argv) == 0
    assert "resumed  3 photos were already done" in capsys.readouterr().out  # a finished run is trusted whole
    assert read_manifest(out / MANIFEST_NAME) == records

    # Resuming from the saved config keeps every setting, even without repeating the options;
    # only a detector path must be named again (a file never picks a model to run, issue 10).
    assert main(["crop", str(photos), "--out", str(out), "--config", str(out / "crop_config.json"), "-q",
                 "--json", "--detector", str(savedmodel_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["crops"] == 2


@pytest.mark.parametrize("extra, message", [
    (["--target", "clok"], "did you mean 'clock'"),
    (["--score-threshold", "2"], "score_threshold must be in [0, 1]"),
    (["--detector", "no-such-detector"], "detector 'no-such-detector' not found"),
])
def test_crop_command_usage_errors_exit_2(photos, tmp_path, capsys, extra, message):
    assert main(["crop", str(photos), "--out", str(tmp_path / "crops"), "-q", *extra]) == 2
    assert message in capsys.readouterr().err


def test_crop_command_missing_input_exits_2(tmp_path, capsys):
    assert main(["crop", str(tmp_path / "absent"), "--out", str(tmp_path / "crops")]) == 2
    assert "absent: expected a folder of photos" in capsys.readouterr().err

"""`detcrop crop` at its trust boundaries (issue 10 rows 3, 5, 6, 9, 12), through the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from detcrop.data.locks import folder_lock
from detcrop.data.manifest import MANIFEST_NAME, read_manifest
from detcrop.pipeline.cli import main
from detect_helpers import RED, ColourBoxDetector, save_scene


@pytest.fixture
def fake_detector(monkeypatch):
    """Registered names load the colour-box fake; paths still go to the real loader."""
    from detcrop.detect import base

    real = base.load_detector
    monkeypatch.setattr(base, "load_detector",
                        lambda name, **kwargs: ColourBoxDetector() if name in base.DETECTORS else real(name, **kwargs))


@pytest.fixture
def photos(tmp_path):
    save_scene(tmp_path / "in" / "a.png", (64, 64), {RED: (8, 8, 40, 40)})
    return tmp_path / "in"


def files_under(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


@pytest.mark.parametrize("label", ["../../x", "../x", "/abs/path", ".hidden"])
def test_a_label_that_would_leave_the_dataset_is_refused(fake_detector, photos, tmp_path, capsys, label):
    before = files_under(tmp_path)
    code = main(["crop", str(photos), "--out", str(tmp_path / "deep" / "out"), "--label", label, "-q"])
    assert code == 2
    assert "class name must be a plain folder name" in capsys.readouterr().err
    assert files_under(tmp_path) == before  # nothing written anywhere
    assert not Path("/abs/path").exists()


def test_a_second_crop_into_a_locked_dataset_exits_2_naming_the_first(fake_detector, photos, tmp_path, capsys):
    out = tmp_path / "out"
    with folder_lock(out, "crop"):  # the first job, still running
        assert main(["crop", str(photos), "--out", str(out), "-q"]) == 2
    error = capsys.readouterr().err
    assert f"{out} is in use by `crop` started" in error and f"pid {os.getpid()}" in error
    assert not (out / MANIFEST_NAME).exists()  # nothing recorded twice
    assert main(["crop", str(photos), "--out", str(out), "-q"]) == 0  # once the first is done
    assert len(read_manifest(out / MANIFEST_NAME)) == 1


def test_a_detector_that_does_not_load_leaves_no_config_behind(fake_detector, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["crop", str(photos), "--out", str(out), "--detector", str(tmp_path / "missing" / "path"), "-q"]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (out / "crop_config.json").exists()
    assert main(["crop", str(photos), "--out", str(out), "-q"]) == 0  # the right command is not refused
    assert (out / "crop_config.json").exists()


@pytest.mark.parametrize("make, mentioned", [
    (lambda folder: None, "no photos to crop"),
    (lambda folder: (folder / "notes.txt").write_text("not a photo"), "1 other file(s) skipped, e.g. "),
    (lambda folder: (folder / "brand").mkdir(), "no photos to crop"),
])
def test_crop_on_a_folder_without_photos_fails_clearly(fake_detector, tmp_path, capsys, make, mentioned):
    folder = tmp_path / "in"
    folder.mkdir()
    make(folder)
    assert main(["crop", str(folder), "--out", str(tmp_path / "out"), "-q"]) == 2
    error = capsys.readouterr().err
    assert "no photos to crop" in error and mentioned in error
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_special_files_in_the_input_are_failed_photos_not_a_hang(photos, tmp_path):
    os.mkfifo(photos / "fifo.jpg")
    (photos / "zero.jpg").symlink_to("/dev/zero")
    out = tmp_path / "out"
    # In a child process with a time limit: a job that hangs on a reading thread cannot be
    # interrupted from inside.
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from detect_helpers import ColourBoxDetector
        from detcrop.detect import base
        base.load_detector = lambda name, **kwargs: ColourBoxDetector()
        from detcrop.pipeline.cli import main
        sys.exit(main(["crop", {str(photos)!r}, "--out", {str(out)!r}, "-q"]))
    """)
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, finished.stderr
    by_name = {Path(record.source_path).name: record for record in read_manifest(out / MANIFEST_NAME)}
    assert by_name["a.png"].status == "cropped"
    for name, what in (("fifo.jpg", "a FIFO"), ("zero.jpg", "a character device")):
        assert by_name[name].status == "failed"
        assert by_name[name].reason == f"unreadable: not a regular file ({what})"
    assert "2 failed" in finished.stdout

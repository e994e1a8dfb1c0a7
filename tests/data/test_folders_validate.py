"""Class-folder scanning and the beginner's dataset checks."""

from __future__ import annotations

import shutil

import pytest

from detcrop.data.folders import scan_class_folders
from detcrop.data.validate import ValidationConfig, validate_dataset
from imagegen import jpeg_bytes, make_class_folders, save_image


def test_scan_sorts_classes_recurses_and_reports_skips(tmp_path):
    make_class_folders(tmp_path, {"zenith": 2, "Audemars": 1})
    save_image(tmp_path / "zenith" / "2019" / "nested.PNG")
    (tmp_path / "zenith" / "notes.txt").write_text("x")
    (tmp_path / "stray.jpg").write_bytes(jpeg_bytes())
    (tmp_path / ".hidden").mkdir()
    save_image(tmp_path / "zenith" / ".thumb.png")
    (tmp_path / "empty class").mkdir()

    dataset = scan_class_folders(tmp_path)

    assert dataset.class_names == ("Audemars", "empty class", "zenith")
    assert dataset.counts() == {"Audemars": 1, "empty class": 0, "zenith": 3}
    assert any(sample.path.name == "nested.PNG" and sample.label == "zenith" for sample in dataset.samples)
    reasons = {item.path.name: item.reason for item in dataset.skipped}
    assert set(reasons) == {"notes.txt", "stray.jpg"}
    assert "not an image extension" in reasons["notes.txt"]
    assert "dataset root" in reasons["stray.jpg"]


@pytest.mark.parametrize("make, error", [
    (lambda path: None, FileNotFoundError),
    (lambda path: path.write_text("x"), NotADirectoryError),
])
def test_scan_refuses_non_folders(tmp_path, make, error):
    target = tmp_path / "dataset"
    make(target)
    with pytest.raises(error, match="dataset"):
        scan_class_folders(target)


def test_usable_dataset_has_no_errors(tmp_path):
    make_class_folders(tmp_path, {"a": 5, "b": 6})
    report = validate_dataset(tmp_path, progress=False)
    assert report.usable and not report.errors and not report.warnings
    assert report.counts == {"a": 5, "b": 6}


def test_too_few_classes_and_short_classes_are_errors(tmp_path):
    make_class_folders(tmp_path / "one", {"only": 9})
    report = validate_dataset(tmp_path / "one", progress=False)
    assert not report.usable and [problem.code for problem in report.errors] == ["too-few-classes"]

    make_class_folders(tmp_path / "short", {"a": 5, "b": 3})
    (tmp_path / "short" / "c").mkdir()
    report = validate_dataset(tmp_path / "short", progress=False)
    assert not report.usable
    (problem,) = report.errors
    assert problem.code == "too-few-images" and "b (3)" in problem.message and "c (0)" in problem.message
    assert "a (" not in problem.message


def test_bad_files_do_not_count_and_are_named(tmp_path):
    make_class_folders(tmp_path, {"a": 5, "b": 5})
    (tmp_path / "a" / "zero.jpg").write_bytes(b"")
    (tmp_path / "b" / "cut.jpg").write_bytes(jpeg_bytes()[:150])
    shutil.copy(tmp_path / "b" / "0.png", tmp_path / "b" / "huge.png")
    report = validate_dataset(tmp_path, ValidationConfig(max_bytes=600), progress=False)
    bad = {item["path"].split("/")[-1]: item["kind"] for item in report.bad_files}
    assert bad["zero.jpg"] == "unreadable" and bad["cut.jpg"] == "unreadable"
    assert all(kind == "too-large" for name, kind in bad.items() if name.endswith(".png"))
    assert not report.usable  # every png is over 600 bytes, so both classes fall short


def test_duplicates_within_and_across_classes(tmp_path):
    make_class_folders(tmp_path, {"a": 5, "b": 5})
    shutil.copy(tmp_path / "a" / "0.png", tmp_path / "a" / "copy.png")
    shutil.copy(tmp_path / "a" / "1.png", tmp_path / "b" / "from_a.png")
    report = validate_dataset(tmp_path, progress=False)
    codes = {problem.code for problem in report.warnings}
    assert {"duplicates-within-class", "duplicates-across-classes"} <= codes
    assert len(report.duplicate_groups) == 2
    assert report.usable


def test_imbalance_warns(tmp_path):
    make_class_folders(tmp_path, {"big": 16, "small": 5})
    report = validate_dataset(tmp_path, progress=False)
    assert [problem.code for problem in report.warnings] == ["class-imbalance"]
    assert report.usable
    assert not validate_dataset(tmp_path, ValidationConfig(max_imbalance=4.0), progress=False).warnings


def test_watches_brands_is_usable_and_its_split_has_no_duplicate_across_sides(shared_data):
    from detcrop.data.splits import split_class_folders

    root = shared_data / "watches-brands"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    report = validate_dataset(root, progress=False)
    assert report.usable, report.format_text()
    assert len(report.class_names) == 13
    dataset = scan_class_folders(root)
    split = split_class_folders(dataset, val_ratio=0.2, seed=0, sha256_by_path=report.sha256)
    train_hashes = {report.sha256[str(dataset.samples[index].path)] for index in split.train}
    val_hashes = {report.sha256[str(dataset.samples[index].path)] for index in split.val}
    assert not train_hashes & val_hashes
    assert abs(len(split.val) / len(dataset.samples) - 0.2) < 0.02
    assert {dataset.samples[index].label for index in split.val} == set(dataset.class_names)

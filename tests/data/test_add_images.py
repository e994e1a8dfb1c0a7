"""The beginner's add-images step: squared, deduplicated, bad files reported."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from detcrop.data.folders import ClassNameError, add_images, check_class_name, scan_class_folders, square_image
from imagegen import jpeg_bytes, save_image
from detcrop.pipeline.cli import main


def test_images_are_squared_resized_and_deduplicated(tmp_path):
    wide = save_image(tmp_path / "in" / "wide.png", np.zeros((20, 60, 3), np.uint8))
    tall = save_image(tmp_path / "in" / "tall.jpg", np.full((50, 30, 3), 200, np.uint8))
    broken = tmp_path / "in" / "broken.jpg"
    broken.write_bytes(jpeg_bytes()[:100])
    report = add_images(tmp_path / "ds", "rolex", [wide, tall, broken, wide], size=32)
    assert len(report.added) == 2 and report.duplicates == [wide]
    assert report.failed[0][0] == broken and "decode" in report.failed[0][1]
    assert all(Image.open(path).size == (32, 32) for path in report.added)
    assert scan_class_folders(tmp_path / "ds").counts() == {"rolex": 2}


def test_centre_square():
    image = Image.fromarray(np.arange(4 * 8 * 3, dtype=np.uint8).reshape(4, 8, 3))
    square = square_image(image)
    assert square.size == (4, 4)
    np.testing.assert_array_equal(np.asarray(square), np.asarray(image)[:, 2:6])


@pytest.mark.parametrize("name, reason", [
    ("rolex", None),
    ("Grand Seiko café", None),
    ("a" * 64, None),
    ("", "empty"),
    (".hidden", "start with '.'"),
    ("..", "start with '.'"),
    ("a/b", "separators"),
    ("a\\b", "separators"),
    ("a:b", "separators"),
    ("tab\there", "separators"),
    (" padded", "spaces"),
    ("a" * 65, "at most 64"),
])
def test_class_name_rule(tmp_path, name, reason):
    if reason is None:
        assert check_class_name(name) == name
        assert add_images(tmp_path, name, []).added == []
    else:
        with pytest.raises(ClassNameError, match=reason):
            check_class_name(name)
        with pytest.raises(ValueError, match="class name"):
            add_images(tmp_path, name, [])


def test_add_command_reports_short_classes(tmp_path, capsys):
    folder = tmp_path / "in"
    for index in range(3):
        save_image(folder / f"{index}.png", seed=index)
    assert main(["add", str(tmp_path / "ds"), "cats", str(folder), "--size", "16"]) == 0
    printed = capsys.readouterr().out
    assert "added 3" in printed and "short: cats" in printed

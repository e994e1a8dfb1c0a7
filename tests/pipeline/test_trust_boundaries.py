"""Trust boundaries and file safety (issue 10): what a hostile or careless input must not do.

Each test reproduces one row of the issue's table; every CLI refusal is one line on stderr
with exit code 2, never a traceback.
"""

from __future__ import annotations

import pytest

from detcrop.data.folders import scan_class_folders
from detcrop.pipeline.cli import main
from imagegen import save_image


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

"""`detcrop validate` through `main(argv)`: exit codes, text and JSON output."""

from __future__ import annotations

import json
import subprocess
import sys

from imagegen import make_class_folders
from detcrop.pipeline.cli import main


def test_usable_dataset_exits_zero(tmp_path, capsys):
    make_class_folders(tmp_path, {"a": 5, "b": 5})
    assert main(["validate", str(tmp_path), "-q"]) == 0
    assert "usable: yes" in capsys.readouterr().out


def test_short_class_exits_one_and_names_it(tmp_path, capsys):
    make_class_folders(tmp_path, {"a": 5, "b": 2})
    assert main(["validate", str(tmp_path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["usable"] is False
    assert "b (2)" in report["errors"][0]["message"]


def test_strict_turns_warnings_into_failure(tmp_path, capsys):
    make_class_folders(tmp_path, {"a": 5, "b": 20})
    assert main(["validate", str(tmp_path), "-q"]) == 0
    assert main(["validate", str(tmp_path), "-q", "--strict"]) == 1


def test_missing_folder_is_a_usage_error(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_console_script_help_is_fast_and_lists_commands():
    completed = subprocess.run([sys.executable, "-m", "detcrop.pipeline.cli", "--help"], capture_output=True, text=True,
                               timeout=60)
    assert completed.returncode == 0 and "validate" in completed.stdout
    probe = subprocess.run([sys.executable, "-c", "import sys, pipeline.cli as c; c.build_parser();"
                            "print('tensorflow' in sys.modules)"], capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "False", "building the CLI must not import TensorFlow"

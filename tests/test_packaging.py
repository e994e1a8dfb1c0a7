"""The wheel a user installs: one import root, every package folder in it, runnable from anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGE_FOLDERS = ("data", "detect", "classify", "pipeline")


def _package_folders() -> set[str]:
    """`detcrop.<dotted>` for every folder under the four stage folders holding an __init__.py."""
    names = set()
    for top in STAGE_FOLDERS:
        for init in (ROOT / top).rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            relative = init.parent.relative_to(ROOT)
            names.add("detcrop." + ".".join(relative.parts))
    return names


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    assert listed == _package_folders()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True, timeout=300)
    (built,) = out.glob("detcrop-*.whl")
    return built


def test_wheel_has_one_top_level_name_and_its_data_files(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"detcrop"}
    assert "detcrop/detect/coco_labels.json" in names
    assert "detcrop/pipeline/commands/crop.py" in names


def test_wheel_runs_from_another_folder(wheel, tmp_path):
    """A fresh venv holding only the wheel (dependencies borrowed read-only from this one) runs detcrop."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    # The dependencies (TensorFlow etc.) come from this environment's site-packages through a
    # plain path entry: .pth files there (such as the editable finder for this checkout) are
    # not processed, so detcrop itself can only come from the wheel.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                    "--no-deps", "-q", str(wheel)], check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environment = {**os.environ, "PYTHONNOUSERSITE": "1"}
    environment.pop("PYTHONPATH", None)
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import detcrop.data.images as m; print(m.__file__)"],
                           cwd=elsewhere, env=environment, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    assert str(venv) in where.stdout and str(ROOT) not in where.stdout

    help_run = subprocess.run([str(venv / "bin" / "detcrop"), "--help"], cwd=elsewhere, env=environment,
                              capture_output=True, text=True, timeout=120)
    assert help_run.returncode == 0, help_run.stderr
    assert "crop" in help_run.stdout and "train" in help_run.stdout

    # A real command: validate a small dataset (5 images in each of two classes).
    from imagegen import make_class_folders
    dataset = make_class_folders(elsewhere / "dataset", {"a": 5, "b": 5})
    validate = subprocess.run([str(venv / "bin" / "detcrop"), "validate", str(dataset), "--json"],
                              cwd=elsewhere, env=environment, capture_output=True, text=True, timeout=300)
    assert validate.returncode == 0, validate.stderr
    assert '"usable": true' in validate.stdout

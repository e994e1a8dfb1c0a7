"""Files shipped inside installed pip packages (offline model weights), found without importing them."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path, PurePosixPath

from detcrop.data.errors import MissingFileError


def distribution_version(distribution_name: str) -> str:
    """The installed version of `distribution_name`, or "not installed"."""
    try:
        return importlib.metadata.version(distribution_name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def find_distribution_file(distribution_name: str, file_name: str, what: str) -> Path:
    """The installed file of `distribution_name` whose name (or path suffix) is `file_name`.

    Located through the distribution's metadata (its RECORD), never by importing it.
    Raises `FileNotFoundError` saying which package to install or reinstall for `what`.
    """
    try:
        distribution = importlib.metadata.distribution(distribution_name)
    except importlib.metadata.PackageNotFoundError:
        raise MissingFileError(
            f"{what} not found: the package {distribution_name!r} is not installed; "
            f"run `pip install {distribution_name}`"
        ) from None
    for file in distribution.files or ():
        posix = PurePosixPath(file)
        if posix.name == file_name or posix.as_posix().endswith("/" + file_name):
            path = Path(distribution.locate_file(file))
            if path.is_file():
                return path
    raise MissingFileError(
        f"{what} not found: {distribution_name!r} {distribution.version} is installed at "
        f"{distribution.locate_file('')} but holds no {file_name}; reinstall it with "
        f"`pip install --force-reinstall {distribution_name}`"
    )

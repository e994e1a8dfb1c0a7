"""The benchmarks' photo loading: image files under folders, decoded once, unreadable ones reported."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from detcrop.data.folders import expand_image_paths
from detcrop.data.images import ImageError, load_image_array


def cpu_flags() -> str:
    """The CPU's vector and matrix units a speed figure depends on, as /proc/cpuinfo (`lscpu`) names them."""
    try:
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile")
    return ", ".join(f"{flag}={'yes' if flag in flags else 'no'}" for flag in wanted)


def load_photos(folders: Sequence[Path]) -> tuple[list[Path], list[np.ndarray]]:
    """(every image file under `folders`, sorted per folder; the arrays of those that decode).

    A file that does not decode is named on stderr and left out of the arrays only.
    """
    paths = expand_image_paths(folders)
    images = []
    for path in paths:
        try:
            images.append(load_image_array(path))
        except ImageError as error:
            print(f"skipped {error}", file=sys.stderr)
    return paths, images

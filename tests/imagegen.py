"""Tiny generated images in every mode and format the data layer must read."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def gradient_rgb(width: int = 24, height: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.zeros((height, width, 3), dtype=np.uint8)
    base[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    base[..., 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    base[..., 2] = rng.integers(0, 256, dtype=np.uint8)
    return base


def save_image(path: Path, array: np.ndarray | None = None, mode: str = "RGB", fmt: str | None = None,
               seed: int = 0, **save_kwargs) -> Path:
    """Write a small image of `mode` to `path` (format from the suffix unless `fmt`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(gradient_rgb(seed=seed) if array is None else array)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257)  # uint16 -> I;16
    elif mode != "RGB":
        image = image.convert(mode)
    image.save(path, format=fmt, **save_kwargs)
    return path


def jpeg_bytes(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gradient_rgb(seed=seed)).save(buffer, format="JPEG")
    return buffer.getvalue()


def make_class_folders(root: Path, counts: dict[str, int], size: int = 16) -> Path:
    """ROOT/<class>/<i>.png with distinct random images (never byte-identical)."""
    rng = np.random.default_rng(len(counts))
    for name, count in counts.items():
        for index in range(count):
            array = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            save_image(root / name / f"{index}.png", array)
    return root

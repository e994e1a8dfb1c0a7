"""Shared pieces of the `detcrop ui` tests: real photos, a fast training setup, a fake detector."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from detcrop.detect.detections import Detections
from detcrop.detect.labels import coco_labels

#: Local origin the test clients claim, as a browser on the page would.
BASE_URL = "http://127.0.0.1:8765"
#: Two visibly different watch brands from ../shared/data/watches-brands.
BRANDS = ("rolex", "seiko")


def fast_training(cache_dir: Path) -> dict:
    """TrainConfig values that train in about a second: random-init `scratch` at 32 px."""
    return {"backbone": "scratch", "input_size": 32, "hidden_units": 0, "cache_dir": str(cache_dir),
            "flip_features": False, "tta_flip": False, "mistakes": 0}


def brand_photos(shared_data: Path, brand: str, count: int, start: int = 0) -> list[Path]:
    photos = sorted((shared_data / "watches-brands" / brand).glob("*.jpg"))
    return photos[start:start + count]


def files_field(paths: list[Path], field: str = "files") -> list[tuple[str, tuple[str, bytes, str]]]:
    """A multipart `files` list for TestClient.post(files=...)."""
    return [(field, (path.name, path.read_bytes(), "image/jpeg")) for path in paths]


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class RedSquareDetector:
    """A fake `Detector`: the extent of pure red pixels is a COCO clock (score 0.9); else nothing."""

    name = "red-square"

    def detect(self, image: np.ndarray) -> Detections:
        height, width = image.shape[:2]
        mask = np.all(image == (255, 0, 0), axis=2)
        if not mask.any():
            return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), (),
                              (width, height))
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        box = np.array([[cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]], np.float32)
        return Detections(box, np.array([0.9], np.float32), np.array([85], np.int64), (coco_labels()[85],),
                          (width, height))

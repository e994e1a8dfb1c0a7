"""The optional "find the object first" step: stage one (`detect.crop.crop_photo`) on each added photo.

The detector is the offline SSD MobileNet V2 COCO graph, loaded on first use and shared by
the requests (one detection at a time). A photo where nothing is found is kept whole and
marked, as `detcrop crop --on-empty whole-photo` does, so the page's dataset is the one
`detcrop crop` would write.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from detcrop.data.images import decode_image
from detcrop.detect.crop import CropConfig, crop_photo
from detcrop.data.manifest import STATUS_CROPPED


def crop_config_for(target: str) -> CropConfig:
    """Crop settings of the page: the best box of `target`, squared, whole photo when none."""
    return CropConfig(targets=(target,), max_crops_per_photo=1, on_empty="whole-photo", square="expand")


class ObjectNotCropped(Exception):
    """The detector failed on a photo; `reason` says how."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class FoundObject:
    image: object  # PIL image of the crop (or of the whole photo)
    box: tuple[float, float, float, float] | None  # detector box in the photo, pixels xyxy; None: nothing found
    score: float | None
    photo_size: tuple[int, int]  # (width, height) of the photo the box refers to

    def note(self) -> dict:
        """What the project keeps about the image (the page marks whole photos)."""
        return {"whole_photo": self.box is None, "photo_size": list(self.photo_size),
                "box": None if self.box is None else [round(value, 1) for value in self.box],
                "score": None if self.score is None else round(self.score, 4)}


class ObjectFinder:
    """Stage one for one photo at a time; `detector` (a `detect.base.Detector`) is loaded lazily."""

    def __init__(self, detector=None):
        self._detector = detector
        self._lock = threading.Lock()

    def detector(self):
        """The detector, loaded on first use (the page's test step shares it)."""
        with self._lock:
            if self._detector is None:
                from detcrop.detect.base import load_configured_detector

                config = CropConfig()
                self._detector = load_configured_detector(config.detector, config.runtime)
            return self._detector

    def find(self, image: np.ndarray, target: str, label: str, source: str = "photo") -> FoundObject:
        detector = self.detector()
        with self._lock:
            outcome = crop_photo(image, crop_config_for(target), detector, source=source, label=label)
        if outcome.status != STATUS_CROPPED:
            raise ObjectNotCropped(outcome.reason or outcome.status)
        record, crop = outcome.records[0], outcome.files[0]
        height, width = image.shape[:2]
        found = record.score is not None
        return FoundObject(decode_image(crop.jpeg, name=crop.path), tuple(record.box) if found else None,
                           record.score, (width, height))

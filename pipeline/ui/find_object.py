"""The optional "find the object first" step: stage one (detect and crop) on each added photo.

The detector is the offline SSD MobileNet V2 COCO graph, loaded on first use and shared by
the requests (one detection at a time). A photo where nothing is found is kept whole and
marked, as `detcrop crop --on-empty whole-photo` does.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from detcrop.detect.crop import CropConfig, crop_detections


def crop_config_for(target: str) -> CropConfig:
    """Crop settings of the page: the best box of `target`, squared, whole photo when none."""
    return CropConfig(targets=(target,), max_crops_per_photo=1, on_empty="whole-photo", square="expand")


@dataclass(frozen=True)
class FoundObject:
    image: np.ndarray  # the crop (or the whole photo)
    box: tuple[float, float, float, float] | None  # detector box in the photo, pixels xyxy; None: nothing found
    score: float | None
    photo_size: tuple[int, int]  # (width, height) of the photo the box refers to

    def note(self) -> dict:
        """What the project keeps about the image (the page marks whole photos)."""
        return {"whole_photo": self.box is None, "photo_size": list(self.photo_size),
                "box": None if self.box is None else [round(value, 1) for value in self.box],
                "score": None if self.score is None else round(self.score, 4)}


class ObjectFinder:
    """Detect and crop one photo at a time; `detector` (a `detect.base.Detector`) is loaded lazily."""

    def __init__(self, detector=None):
        self._detector = detector
        self._lock = threading.Lock()

    def find(self, image: np.ndarray, target: str) -> FoundObject:
        config = crop_config_for(target)
        with self._lock:
            if self._detector is None:
                from detcrop.detect.base import load_detector

                self._detector = load_detector(config.detector)
            detections = self._detector.detect(image)
        crop = crop_detections(image, detections, config)[0]
        height, width = image.shape[:2]
        if crop.score is None:
            return FoundObject(image, None, None, (width, height))
        return FoundObject(crop.image, tuple(float(value) for value in crop.box), float(crop.score), (width, height))

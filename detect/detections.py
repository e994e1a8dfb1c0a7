"""`Detections`: what one `Detector.detect` call returns, validated on construction.

Boxes are pixel `[x_min, y_min, x_max, y_max]` in the image that was passed in. TF detector
outputs (normalised `[ymin, xmin, ymax, xmax]`) become `Detections` through
`Detections.from_tensorflow`, called only inside the detector adapters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np


@dataclass(frozen=True)
class Detections:
    """N detections in one image, best first is not assumed (see `sorted_by_score`)."""

    boxes_xyxy: np.ndarray  # float32 (N, 4): x_min, y_min, x_max, y_max in pixels
    scores: np.ndarray  # float32 (N,): confidence in [0, 1]
    class_ids: np.ndarray  # int64 (N,): class ids of the detector's label map (COCO 90-id)
    class_names: tuple[str, ...]  # N names, one per box
    image_size: tuple[int, int]  # (width, height) of the image the boxes refer to

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes_xyxy, dtype=np.float32)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        class_ids = np.asarray(self.class_ids)
        if class_ids.size and not np.issubdtype(class_ids.dtype, np.integer):
            if not np.all(np.equal(np.mod(class_ids, 1), 0)):
                raise ValueError(f"class_ids must be whole numbers, got {class_ids[:5]!r}")
        class_ids = class_ids.astype(np.int64).reshape(-1)
        names = tuple(str(name) for name in self.class_names)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes_xyxy must have shape (N, 4), got {boxes.shape}")
        count = boxes.shape[0]
        for field_name, length in (("scores", scores.shape[0]), ("class_ids", class_ids.shape[0]),
                                   ("class_names", len(names))):
            if length != count:
                raise ValueError(f"{field_name} must have {count} entries (one per box), got {length}")
        if len(self.image_size) != 2 or any(int(side) <= 0 for side in self.image_size):
            raise ValueError(f"image_size must be (width, height) with positive sides, got {self.image_size!r}")
        width, height = (int(side) for side in self.image_size)
        if not np.all(np.isfinite(boxes)) or not np.all(np.isfinite(scores)):
            raise ValueError("boxes_xyxy and scores must be finite numbers")
        if np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1]):
            raise ValueError(f"boxes must have x_max >= x_min and y_max >= y_min, got {boxes[:3].tolist()}...")
        # Half a pixel of slack: detectors round, and normalised 1.0 maps onto the border.
        if count and (boxes.min() < -0.5 or np.any(boxes[:, [0, 2]] > width + 0.5)
                      or np.any(boxes[:, [1, 3]] > height + 0.5)):
            raise ValueError(f"boxes must lie inside the {width}x{height} image, got {boxes.tolist()}")
        if np.any(scores < 0) or np.any(scores > 1):
            raise ValueError(f"scores must be in [0, 1], got {scores.tolist()}")
        for read_only in (boxes, scores, class_ids):
            read_only.setflags(write=False)
        object.__setattr__(self, "boxes_xyxy", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "class_ids", class_ids)
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "image_size", (width, height))

    def __len__(self) -> int:
        return int(self.boxes_xyxy.shape[0])

    @classmethod
    def empty(cls, image_size: tuple[int, int]) -> "Detections":
        """No detections in an image of `image_size` (width, height)."""
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), (), image_size)

    @classmethod
    def from_tensorflow(
        cls,
        outputs: Mapping[str, Any],
        image_size: tuple[int, int],
        label_map: Mapping[int, str],
    ) -> "Detections":
        """From a TF Object Detection API output dict for one image.

        `outputs` holds `detection_boxes` ([1,] N, 4 normalised ymin, xmin, ymax, xmax),
        `detection_scores`, `detection_classes` (float or int ids) and optionally
        `num_detections` (only the first that many rows are valid). Boxes are clipped to
        the image; ids missing from `label_map` are named `"id<N>"`.
        """
        required = ("detection_boxes", "detection_scores", "detection_classes")
        missing = [key for key in required if key not in outputs]
        if missing:
            raise ValueError(
                f"detector output lacks {missing}: expected the TF Hub object-detection signature "
                f"({', '.join(required)}, num_detections), got keys {sorted(outputs)}"
            )

        def as_array(key: str) -> np.ndarray:
            value = outputs[key]
            return np.asarray(value.numpy() if hasattr(value, "numpy") else value)

        # Batched outputs carry a leading batch axis of 1; take the one image.
        boxes = as_array("detection_boxes")
        boxes = (boxes[0] if boxes.ndim == 3 else boxes).reshape(-1, 4).astype(np.float32)
        scores = as_array("detection_scores")
        scores = (scores[0] if scores.ndim == 2 else scores).reshape(-1).astype(np.float32)
        classes = as_array("detection_classes")
        classes = (classes[0] if classes.ndim == 2 else classes).reshape(-1)
        if not boxes.shape[0] == scores.shape[0] == classes.shape[0]:
            raise ValueError(
                f"detector output has {boxes.shape[0]} boxes, {scores.shape[0]} scores and "
                f"{classes.shape[0]} classes; expected one of each per detection"
            )
        count = boxes.shape[0]
        if "num_detections" in outputs:
            count = min(count, int(as_array("num_detections").reshape(-1)[0]))
        boxes, scores, classes = boxes[:count], scores[:count], classes[:count]
        width, height = (int(side) for side in image_size)
        normalised = np.clip(boxes, 0.0, 1.0)
        boxes_xyxy = np.stack(
            [normalised[:, 1] * width, normalised[:, 0] * height, normalised[:, 3] * width, normalised[:, 2] * height],
            axis=1,
        ).astype(np.float32).reshape(-1, 4)
        class_ids = np.rint(classes).astype(np.int64)
        names = tuple(label_map.get(int(class_id), f"id{int(class_id)}") for class_id in class_ids)
        return cls(boxes_xyxy, np.clip(scores, 0.0, 1.0), class_ids, names, (width, height))

    def select(self, keep: np.ndarray) -> "Detections":
        """The detections at indices or boolean mask `keep`, in that order."""
        keep = np.asarray(keep)
        indices = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64)
        return Detections(
            self.boxes_xyxy[indices], self.scores[indices], self.class_ids[indices],
            tuple(self.class_names[int(index)] for index in indices), self.image_size,
        )

    def sorted_by_score(self) -> "Detections":
        """Best first; ties keep their original order (stable), so results are deterministic."""
        return self.select(np.argsort(-self.scores, kind="stable"))

"""Test helpers for tests/detect: generated scenes, a fake detector and a TF Hub-style SavedModel."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from detcrop.detect.detections import Detections
from detcrop.detect.labels import coco_labels

#: Colours the fake detector recognises: colour -> (COCO class id, score).
RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)
FAKE_CLASSES = {RED: (85, 0.9), BLUE: (85, 0.7), GREEN: (85, 0.2)}


def scene(size: tuple[int, int], boxes: dict[tuple[int, int, int], tuple[int, int, int, int]]) -> np.ndarray:
    """A grey (width, height) image with a filled rectangle per colour at its xyxy box (max exclusive)."""
    width, height = size
    image = np.full((height, width, 3), 128, np.uint8)
    for colour, (x_min, y_min, x_max, y_max) in boxes.items():
        image[y_min:y_max, x_min:x_max] = colour
    return image


def save_scene(path: Path, size, boxes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scene(size, boxes)).save(path, format="PNG")
    return path


def clock_scene(size=(320, 240), center=(200, 110), radius=60) -> np.ndarray:
    """A drawn wall clock (dark rim, white dial, ticks, two hands); SSD MobileNet calls it a clock.

    The clock's outer rim spans center +- (radius + 6) pixels.
    """
    image = Image.new("RGB", size, (120, 140, 160))
    draw = ImageDraw.Draw(image)
    x, y = center
    rim = radius + 6
    draw.ellipse([x - rim, y - rim, x + rim, y + rim], fill=(30, 30, 30))
    draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(245, 245, 240))
    for hour in range(12):
        angle = math.radians(hour * 30)
        inner = radius * (0.68 if hour % 3 == 0 else 0.78)
        draw.line([x + inner * math.sin(angle), y - inner * math.cos(angle),
                   x + radius * 0.92 * math.sin(angle), y - radius * 0.92 * math.cos(angle)],
                  fill=(0, 0, 0), width=4 if hour % 3 == 0 else 2)
    for degrees, length, width in ((300, 0.5, 6), (60, 0.8, 4)):
        angle = math.radians(degrees)
        draw.line([x, y, x + radius * length * math.sin(angle), y - radius * length * math.cos(angle)],
                  fill=(0, 0, 0), width=width)
    draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=(0, 0, 0))
    return np.asarray(image)


class ColourBoxDetector:
    """A fake `Detector`: one box per known colour present, at that colour's exact extent."""

    name = "fake-colour-boxes"

    def __init__(self):
        self.calls = 0

    def detect(self, image: np.ndarray) -> Detections:
        self.calls += 1
        height, width = image.shape[:2]
        boxes, scores, class_ids = [], [], []
        for colour, (class_id, score) in FAKE_CLASSES.items():
            mask = np.all(image == np.array(colour, np.uint8), axis=2)
            if mask.any():
                rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
                boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
                scores.append(score)
                class_ids.append(class_id)
        names = tuple(coco_labels()[class_id] for class_id in class_ids)
        return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                          np.array(class_ids, np.int64), names, (width, height))


def save_red_box_savedmodel(path: Path) -> Path:
    """A SavedModel with the TF Hub object-detection signature that finds the red rectangle.

    uint8 [1, H, W, 3] in; out: the red area's normalised yxyx box as a clock (score 0.9, or
    0 when there is no red), a fixed person box (0.3), and a third row past num_detections
    (a full-image clock at 1.0) that a correct reader must ignore.
    """
    import tensorflow as tf

    class RedBoxModel(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])
        def __call__(self, images):
            image = images[0]
            size = tf.cast(tf.shape(image)[:2], tf.float32)
            mask = (image[..., 0] > 200) & (image[..., 1] < 60) & (image[..., 2] < 60)
            rows = tf.cast(tf.where(tf.reduce_any(mask, axis=1))[:, 0], tf.float32)
            cols = tf.cast(tf.where(tf.reduce_any(mask, axis=0))[:, 0], tf.float32)
            found = tf.size(rows) > 0
            red_box = tf.cond(
                found,
                lambda: tf.stack([tf.reduce_min(rows) / size[0], tf.reduce_min(cols) / size[1],
                                  (tf.reduce_max(rows) + 1) / size[0], (tf.reduce_max(cols) + 1) / size[1]]),
                lambda: tf.zeros([4]),
            )
            boxes = tf.stack([red_box, tf.constant([0.0, 0.0, 0.5, 0.5]), tf.constant([0.0, 0.0, 1.0, 1.0])])
            scores = tf.stack([tf.where(found, 0.9, 0.0), tf.constant(0.3), tf.constant(1.0)])
            return {
                "detection_boxes": boxes[tf.newaxis],
                "detection_scores": scores[tf.newaxis],
                "detection_classes": tf.constant([[85.0, 1.0, 85.0]]),
                "num_detections": tf.constant([2.0]),
            }

    module = RedBoxModel()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.__call__})
    return path

"""Crop geometry: from a detector box to the pixel region that is cut. Pure functions, no I/O.

Order of operations (also in the README):
1. the box is clipped to the image (a box wholly outside it is an error);
2. `margin` grows each side by that fraction of the box's width (left, right) or height
   (top, bottom): 0.1 makes a 100 px box 120 px;
3. `square`:
   - "expand": the short side grows to the long side around the centre, and the square is
     shifted to lie inside the image; where the image is smaller than the square, the crop is
     clipped (as square as the image allows, never invented pixels);
   - "pad": the square is centred on the box and the part outside the image is filled with
     `pad_color` when cut;
   - "none": the margin box is clipped to the image;
4. integer pixel edges: x_max and y_max are exclusive;
5. a region whose short side inside the image is under `min_size` is rejected (`CropTooSmallError`).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from detcrop.data.errors import DetcropError

SQUARE_MODES = ("expand", "pad", "none")


class CropTooSmallError(DetcropError, ValueError):
    """The region inside the image is smaller than `min_size` on its short side."""


def _fit(start: int, size: int, limit: int) -> tuple[int, int]:
    """Shift [start, start + size) inside [0, limit); clip it when size > limit."""
    if size >= limit:
        return 0, limit
    start = min(max(start, 0), limit - size)
    return start, start + size


def crop_region(
    box_xyxy: Sequence[float],
    image_size: tuple[int, int],
    margin: float = 0.0,
    square: str = "expand",
    min_size: int = 1,
) -> tuple[int, int, int, int]:
    """The integer region `(x_min, y_min, x_max, y_max)` to cut for `box_xyxy`; see the module doc.

    Only `square="pad"` returns regions reaching outside the image.

    >>> crop_region((10, 20, 50, 40), (100, 100), margin=0.0, square="expand")
    (10, 10, 50, 50)
    """
    if square not in SQUARE_MODES:
        raise ValueError(f"square must be one of {', '.join(SQUARE_MODES)}, got {square!r}")
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a fraction >= 0 of the box size, got {margin!r}")
    if int(min_size) < 1:
        raise ValueError(f"min_size must be at least 1 pixel, got {min_size!r}")
    width, height = (int(side) for side in image_size)
    if width <= 0 or height <= 0:
        raise ValueError(f"image_size must be (width, height) with positive sides, got {image_size!r}")
    values = [float(value) for value in box_xyxy]
    if len(values) != 4 or not all(math.isfinite(value) for value in values):
        raise ValueError(f"box must be 4 finite numbers x_min, y_min, x_max, y_max, got {box_xyxy!r}")
    x_min, y_min, x_max, y_max = values
    if x_max <= x_min or y_max <= y_min:
        raise ValueError(f"box must have x_max > x_min and y_max > y_min, got {box_xyxy!r}")
    x_min, x_max = max(x_min, 0.0), min(x_max, float(width))
    y_min, y_max = max(y_min, 0.0), min(y_max, float(height))
    if x_max <= x_min or y_max <= y_min:
        raise ValueError(f"box {box_xyxy!r} lies outside the {width}x{height} image")

    box_width, box_height = x_max - x_min, y_max - y_min
    x_min, x_max = x_min - margin * box_width, x_max + margin * box_width
    y_min, y_max = y_min - margin * box_height, y_max + margin * box_height

    if square == "none":
        region = (max(math.floor(x_min), 0), max(math.floor(y_min), 0),
                  min(math.ceil(x_max), width), min(math.ceil(y_max), height))
    else:
        side = math.ceil(max(x_max - x_min, y_max - y_min) - 1e-6)
        # Half-up rounding of the centred start (Python's round() would round half to even).
        left = math.floor((x_min + x_max) / 2 - side / 2 + 0.5)
        top = math.floor((y_min + y_max) / 2 - side / 2 + 0.5)
        if square == "pad":
            region = (left, top, left + side, top + side)
        else:
            left, right = _fit(left, side, width)
            top, bottom = _fit(top, side, height)
            region = (left, top, right, bottom)

    inside_width = min(region[2], width) - max(region[0], 0)
    inside_height = min(region[3], height) - max(region[1], 0)
    if min(inside_width, inside_height) < int(min_size):
        raise CropTooSmallError(
            f"crop {inside_width}x{inside_height} px inside the image is under min_size {int(min_size)} px"
        )
    return tuple(int(value) for value in region)  # type: ignore[return-value]


def cut_region(image: np.ndarray, region: Sequence[int], pad_color: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """The pixels of `region` (x_min, y_min, x_max, y_max) from `image`; outside parts get `pad_color`."""
    x_min, y_min, x_max, y_max = (int(value) for value in region)
    if x_max <= x_min or y_max <= y_min:
        raise ValueError(f"region must have x_max > x_min and y_max > y_min, got {tuple(region)!r}")
    height, width = image.shape[:2]
    if x_min >= 0 and y_min >= 0 and x_max <= width and y_max <= height:
        return np.ascontiguousarray(image[y_min:y_max, x_min:x_max])
    canvas = np.empty((y_max - y_min, x_max - x_min, image.shape[2]), dtype=image.dtype)
    canvas[...] = np.asarray(pad_color, dtype=image.dtype)
    source_x, source_y = max(x_min, 0), max(y_min, 0)
    source_x_end, source_y_end = min(x_max, width), min(y_max, height)
    if source_x_end > source_x and source_y_end > source_y:
        canvas[source_y - y_min:source_y_end - y_min, source_x - x_min:source_x_end - x_min] = \
            image[source_y:source_y_end, source_x:source_x_end]
    return canvas

"""Crop geometry at image edges: margin, square by expand or pad, clipping, minimum size."""

import math

import numpy as np
import pytest

from detcrop.detect.geometry import CropTooSmallError, crop_region, cut_region

W, H = 100, 60


@pytest.mark.parametrize("box, margin, square, min_size, expected", [
    # inside the image, no margin
    ((10, 20, 50, 40), 0.0, "none", 1, (10, 20, 50, 40)),
    ((10, 20, 50, 40), 0.0, "expand", 1, (10, 10, 50, 50)),
    ((10, 20, 50, 40), 0.0, "pad", 1, (10, 10, 50, 50)),
    # margin is a fraction of the box's own width / height, per side
    ((20, 20, 40, 30), 0.5, "none", 1, (10, 15, 50, 35)),
    # fractional boxes round outwards
    ((10.4, 20.6, 49.2, 39.1), 0.0, "none", 1, (10, 20, 50, 40)),
    # touching the left/top edge: expand shifts the square inside, pad reaches outside
    ((0, 0, 10, 30), 0.0, "expand", 1, (0, 0, 30, 30)),
    ((0, 0, 10, 30), 0.0, "pad", 1, (-10, 0, 20, 30)),
    ((0, 0, 10, 30), 0.1, "none", 1, (0, 0, 11, 33)),
    # touching the right/bottom edge
    ((90, 50, 100, 60), 0.5, "expand", 1, (80, 40, 100, 60)),
    ((90, 50, 100, 60), 0.5, "pad", 1, (85, 45, 105, 65)),
    ((90, 50, 100, 60), 0.5, "none", 1, (85, 45, 100, 60)),
    # square bigger than the image height: expand clips (as square as the image allows)
    ((0, 10, 100, 50), 0.0, "expand", 1, (0, 0, 100, 60)),
    ((0, 10, 100, 50), 0.0, "pad", 1, (0, -20, 100, 80)),
    # the whole image
    ((0, 0, 100, 60), 0.2, "none", 1, (0, 0, 100, 60)),
    # a box partly outside the image is clipped first
    ((-20, -20, 10, 10), 0.0, "none", 1, (0, 0, 10, 10)),
    ((95, 10, 130, 20), 0.0, "none", 5, (95, 10, 100, 20)),
    # failures
    ((10, 10, 10, 20), 0.0, "none", 1, ValueError("x_max > x_min")),
    ((30, 10, 20, 20), 0.0, "none", 1, ValueError("x_max > x_min")),
    ((110, 10, 120, 20), 0.0, "none", 1, ValueError("outside the 100x60 image")),
    ((0, 0, math.nan, 20), 0.0, "none", 1, ValueError("finite")),
    ((0, 0, 10), 0.0, "none", 1, ValueError("4 finite numbers")),
    ((0, 0, 10, 20), -0.1, "none", 1, ValueError("margin must be")),
    ((0, 0, 10, 20), 0.0, "circle", 1, ValueError("square must be one of")),
    ((0, 0, 10, 20), 0.0, "none", 0, ValueError("min_size must be")),
    ((0, 0, 10, 20), 0.0, "none", 11, CropTooSmallError("10x20 px inside the image is under min_size 11")),
    # pad does not count the padding towards min_size
    ((97, 55, 100, 60), 0.0, "pad", 5, CropTooSmallError("4x5 px inside the image is under min_size 5")),
    ((97, 55, 100, 60), 0.0, "pad", 4, (96, 55, 101, 60)),
])
def test_crop_region(box, margin, square, min_size, expected):
    if isinstance(expected, Exception):
        with pytest.raises(type(expected), match=str(expected)):
            crop_region(box, (W, H), margin, square, min_size)
    else:
        region = crop_region(box, (W, H), margin, square, min_size)
        assert region == expected
        assert all(isinstance(value, int) for value in region)
        if square != "pad":
            assert 0 <= region[0] < region[2] <= W and 0 <= region[1] < region[3] <= H


@pytest.mark.parametrize("box", [(3, 7, 41, 19), (0, 0, 1, 59), (60.5, 2.2, 99.9, 58.8), (0, 0, 100, 60)])
def test_pad_regions_are_square_and_contain_the_box(box):
    x_min, y_min, x_max, y_max = crop_region(box, (W, H), 0.15, "pad")
    assert x_max - x_min == y_max - y_min
    assert x_min <= box[0] and y_min <= box[1] and x_max >= box[2] and y_max >= box[3]


def test_bad_image_size_is_rejected():
    with pytest.raises(ValueError, match="positive sides"):
        crop_region((0, 0, 1, 1), (0, 10))


def test_cut_region_copies_inside_and_pads_outside():
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    inside = cut_region(image, (1, 1, 4, 3))
    np.testing.assert_array_equal(inside, image[1:3, 1:4])
    padded = cut_region(image, (-2, -1, 3, 4), pad_color=(7, 8, 9))
    assert padded.shape == (5, 5, 3)
    np.testing.assert_array_equal(padded[1:, 2:], image[0:4, 0:3])
    np.testing.assert_array_equal(padded[0, 0], [7, 8, 9])
    np.testing.assert_array_equal(padded[:, :2].reshape(-1, 3), np.tile([7, 8, 9], (10, 1)))
    with pytest.raises(ValueError, match="x_max > x_min"):
        cut_region(image, (3, 0, 3, 2))

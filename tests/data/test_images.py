"""Image loading: every mode and format, and every way a file can be bad."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from detcrop.data.images import (
    DecompressionBombError,
    ImageLimits,
    ImageTooLargeError,
    UnreadableImageError,
    UnsupportedFormatError,
    decode_image,
    decode_image_array,
    file_sha256,
    load_image,
    load_image_array,
)
from imagegen import gradient_rgb, jpeg_bytes, save_image


@pytest.mark.parametrize(
    "name, mode, save_kwargs",
    [
        ("rgb.jpg", "RGB", {}),
        ("upper.JPEG", "RGB", {}),
        ("grey.png", "L", {}),
        ("grey_alpha.png", "LA", {}),
        ("palette.png", "P", {}),
        ("rgba.png", "RGBA", {}),
        ("cmyk.jpg", "CMYK", {}),
        ("deep.png", "I;16", {}),
        ("bitmap.bmp", "RGB", {}),
        ("lossless.webp", "RGB", {"lossless": True}),
        ("palette.gif", "P", {}),
        ("unicode ünï 名前.png", "RGB", {}),
    ],
)
def test_every_mode_and_format_becomes_rgb(tmp_path, name, mode, save_kwargs):
    path = save_image(tmp_path / name, mode=mode, **save_kwargs)
    array = load_image_array(path)
    assert array.dtype == np.uint8
    assert array.shape == (16, 24, 3)


def test_lossless_formats_keep_pixels(tmp_path):
    expected = gradient_rgb()
    for name in ("a.png", "a.bmp", "a.webp"):
        path = save_image(tmp_path / name, expected, lossless=True) if name.endswith("webp") else save_image(
            tmp_path / name, expected)
        np.testing.assert_array_equal(load_image_array(path), expected)


def test_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black
    path = tmp_path / "clear.png"
    Image.fromarray(rgba).save(path)
    assert (load_image_array(path) == 255).all()


def test_sixteen_bit_range_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    image.save(path)
    array = load_image_array(path)
    assert array[0, 0, 0] == 0 and array[1, 1, 0] == 255
    assert 100 < array[1, 0, 0] < 140


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((10, 30, 3), dtype=np.uint8)  # wide as stored
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (10, 30)  # tall once upright


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    pixel = load_image_array(path)[4, 4]
    assert pixel[0] > 200 and pixel[2] < 50


def _write(path, payload: bytes):
    path.write_bytes(payload)
    return path


@pytest.mark.parametrize(
    "name, make, error, reason_part",
    [
        ("missing.jpg", None, UnreadableImageError, "not found"),
        ("empty.jpg", lambda: b"", UnreadableImageError, "empty file"),
        ("garbage.jpg", lambda: b"this is not an image at all" * 10, UnreadableImageError, "not a recognisable"),
        ("truncated.jpg", lambda: jpeg_bytes()[:200], UnreadableImageError, "cannot decode"),
        ("corrupt.jpg", lambda: jpeg_bytes()[:100] + b"\x00" * 400 + jpeg_bytes()[500:],
         UnreadableImageError, ""),
    ],
)
def test_bad_files_raise_with_path_and_reason(tmp_path, name, make, error, reason_part):
    path = tmp_path / name
    if make is not None:
        _write(path, make())
    with pytest.raises(error) as caught:
        load_image(path)
    assert str(path) in str(caught.value)
    assert reason_part in caught.value.reason


def test_wrong_format_is_refused(tmp_path):
    path = tmp_path / "scan.jpg"  # a TIFF with a JPEG name
    Image.fromarray(gradient_rgb()).save(path, format="TIFF")
    with pytest.raises(UnsupportedFormatError, match="TIFF"):
        load_image(path)


def test_file_over_byte_limit_is_refused_before_decoding(tmp_path):
    path = save_image(tmp_path / "big.png")
    with pytest.raises(ImageTooLargeError, match="over the limit"):
        load_image(path, ImageLimits(max_bytes=10))
    assert load_image(path, ImageLimits(max_bytes=10_000_000)).size == (24, 16)


def test_decompression_bomb_is_refused(tmp_path):
    # A 20000x20000 one-bit PNG compresses to a few kB but would decode to 1.2 GB of RGB.
    path = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(path, optimize=True)
    assert path.stat().st_size < 200_000
    with pytest.raises(DecompressionBombError, match="decompression bomb"):
        load_image(path)
    with pytest.raises(DecompressionBombError):
        load_image(save_image(tmp_path / "small.png"), ImageLimits(max_pixels=100))


def test_content_hash_depends_on_bytes_only(tmp_path):
    first = save_image(tmp_path / "a.png")
    second = save_image(tmp_path / "sub dir" / "b.png")
    third = save_image(tmp_path / "c.png", seed=1)
    assert file_sha256(first) == file_sha256(second) != file_sha256(third)


def _tiff_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(gradient_rgb()).save(buffer, format="TIFF")
    return buffer.getvalue()


@pytest.mark.parametrize("payload, limits, error", [
    (b"", ImageLimits(), UnreadableImageError),
    (b"this is not an image at all" * 10, ImageLimits(), UnreadableImageError),
    (jpeg_bytes()[:200], ImageLimits(), UnreadableImageError),
    (_tiff_bytes(), ImageLimits(), UnsupportedFormatError),
    (jpeg_bytes(), ImageLimits(max_bytes=10), ImageTooLargeError),
    (jpeg_bytes(), ImageLimits(max_pixels=100), DecompressionBombError),
    (jpeg_bytes(), ImageLimits(), None),
])
def test_bytes_decode_with_the_same_limits_and_errors_as_files(tmp_path, payload, limits, error):
    path = _write(tmp_path / "photo.jpg", payload)
    if error is None:
        np.testing.assert_array_equal(decode_image_array(payload, limits, "upload.jpg"), load_image_array(path, limits))
        return
    with pytest.raises(error) as from_file:
        load_image(path, limits)
    with pytest.raises(error) as from_bytes:
        decode_image(payload, limits, name="upload.jpg")
    assert from_bytes.value.path == "upload.jpg" and from_bytes.value.reason == from_file.value.reason

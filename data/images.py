"""Image loading that never crashes a batch: every refusal is an `ImageError` with the path.

Pillow decodes; EXIF orientation is applied; any mode (L, LA, P, RGBA, CMYK, I;16, ...)
becomes RGB; animated images give their first frame; decompression bombs and files over a
byte limit are refused before they are decoded.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from detcrop.data.errors import DetcropError

#: Files larger than this many bytes are refused unless the caller raises the limit.
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
#: Images with more pixels than this are refused as decompression bombs (about 8k x 8k).
DEFAULT_MAX_PIXELS = 64_000_000
#: Extensions recognised as images (compared case-insensitively).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"})


class ImageError(DetcropError, ValueError):
    """An image that cannot be used; `path` and `reason` say which and why."""

    kind = "unreadable"

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class UnreadableImageError(ImageError):
    """Missing, empty, corrupt, truncated or not an image at all."""

    kind = "unreadable"


class UnsupportedFormatError(ImageError):
    """A real file whose format is not one detcrop reads (e.g. TIFF named .jpg is fine; PDF is not)."""

    kind = "unsupported-format"


class ImageTooLargeError(ImageError):
    """A file over the byte limit."""

    kind = "too-large"


class DecompressionBombError(ImageError):
    """An image whose pixel count is over the limit (a decompression bomb or simply huge)."""

    kind = "decompression-bomb"


#: Formats Pillow may report for the extensions above.
_ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "DIB", "WEBP", "GIF"})


@dataclass(frozen=True)
class ImageLimits:
    """Limits applied before decoding."""

    max_bytes: int = DEFAULT_MAX_BYTES  # refuse files larger than this (bytes)
    max_pixels: int = DEFAULT_MAX_PIXELS  # refuse images with more pixels (width * height)


def is_image_path(path: str | os.PathLike) -> bool:
    """True when the name ends in an image extension (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of the file's bytes (the content hash used in manifests and splits)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def bytes_sha256(payload: bytes) -> str:
    """Hex SHA-256 of `payload`."""
    return hashlib.sha256(payload).hexdigest()


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite on white: transparent product shots have white intent, and black
        # (what a bare convert gives) would add a false dark background.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit greyscale: scale the real value range to 0..255 instead of clipping.
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = np.zeros_like(values) if high <= low else (values - low) * (255.0 / (high - low))
        return Image.fromarray(scaled.round().astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | os.PathLike, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Decode `path` into an upright RGB `PIL.Image`, or raise an `ImageError`.

    >>> load_image("photos/watch.jpg").size  # doctest: +SKIP
    (640, 480)
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UnreadableImageError(path, "file not found") from None
    except OSError as error:
        raise UnreadableImageError(path, f"cannot stat file ({error.strerror or error})") from None
    if not path.is_file():
        raise UnreadableImageError(path, "not a regular file")
    if size == 0:
        raise UnreadableImageError(path, "empty file (0 bytes)")
    if size > limits.max_bytes:
        raise ImageTooLargeError(
            path, f"file is {size:,} bytes, over the limit of {limits.max_bytes:,} bytes"
        )
    try:
        with warnings.catch_warnings():
            # Pillow warns (not raises) between max_pixels and 2x; we decide ourselves.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.format not in _ACCEPTED_FORMATS:
                    raise UnsupportedFormatError(
                        path, f"format {image.format or 'unknown'} is not one of JPEG, PNG, BMP, WEBP, GIF"
                    )
                width, height = image.size
                if width * height > limits.max_pixels:
                    raise DecompressionBombError(
                        path,
                        f"{width}x{height} = {width * height:,} pixels, over the limit of "
                        f"{limits.max_pixels:,} (possible decompression bomb)",
                    )
                if width == 0 or height == 0:
                    raise UnreadableImageError(path, f"image has no pixels ({width}x{height})")
                image.seek(0)  # first frame of animated GIF/WEBP/PNG
                image.load()
                image = ImageOps.exif_transpose(image)
                return _to_rgb(image).copy()
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise DecompressionBombError(path, f"possible decompression bomb ({error})") from None
    except UnidentifiedImageError:
        raise UnreadableImageError(path, "not a recognisable image (corrupt or wrong format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        # Truncated files raise OSError("image file is truncated ..."); broken headers raise
        # SyntaxError or ValueError inside the plugins.
        raise UnreadableImageError(path, f"cannot decode image ({error})") from None


def load_image_array(path: str | os.PathLike, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Like `load_image`, as a `uint8` array of shape (height, width, 3)."""
    return np.asarray(load_image(path, limits), dtype=np.uint8)

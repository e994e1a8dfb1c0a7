"""Image loading that never crashes a batch: every refusal is an `ImageError` with the path.

Pillow decodes; EXIF orientation is applied; any mode (L, LA, P, RGBA, CMYK, I;16, ...)
becomes RGB; animated images give their first frame; decompression bombs and files over a
byte limit are refused before they are decoded.

Two doors, one set of rules: `load_image(path)` reads a file and `decode_image(payload)`
decodes bytes already in memory (an upload, a Ray Data binary record); both apply the same
`ImageLimits` and raise the same `ImageError` kinds. Every file read here, hashing included,
goes through `open_regular_file`, so a FIFO, a device or a symlink to `/dev/zero` named
`x.jpg` is refused before it is opened for reading instead of hanging the job.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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


class NotARegularFileError(DetcropError, OSError):
    """A path that is a FIFO, a device, a socket or a folder (after symlinks), not a file.

    An `OSError`, so callers that skip unreadable files (`except OSError`) skip it too.
    """

    def __init__(self, path: str | os.PathLike, what: str):
        self.path = str(path)
        self.what = what
        super().__init__(f"{self.path}: not a regular file ({what})")


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


def _file_kind(mode: int) -> str:
    for test, what in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a plain file"


def open_regular_file(path: str | os.PathLike) -> BinaryIO:
    """`path` opened for binary reading if it is a regular file (symlinks followed), else `NotARegularFileError`.

    The type is checked before the open (opening a device can have effects of its own) and
    again on the open descriptor, which is opened non-blocking so that a FIFO swapped in
    between cannot hang the caller. Other failures are the `OSError` that `os.stat` or
    `os.open` raise (`FileNotFoundError`, `PermissionError`, ...).
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotARegularFileError(path, _file_kind(mode))
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFileError(path, _file_kind(mode))
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of the file's bytes (the content hash used in manifests and splits).

    Raises `NotARegularFileError` (an `OSError`) for FIFOs, devices and folders instead of
    reading them forever.
    """
    digest = hashlib.sha256()
    with open_regular_file(path) as handle:
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


def read_image_bytes(path: str | os.PathLike, limits: ImageLimits = ImageLimits()) -> bytes:
    """The bytes of the image file `path`, or an `ImageError` (missing, not a regular file, empty, too large).

    Nothing over `limits.max_bytes` is read into memory.
    """
    try:
        handle = open_regular_file(path)
    except FileNotFoundError:
        raise UnreadableImageError(path, "file not found") from None
    except NotARegularFileError as error:
        raise UnreadableImageError(path, f"not a regular file ({error.what})") from None
    except OSError as error:
        raise UnreadableImageError(path, f"cannot open file ({error.strerror or error})") from None
    with handle:
        try:
            size = os.fstat(handle.fileno()).st_size
            _check_size(path, size, limits)
            payload = handle.read(limits.max_bytes + 1)  # the file may have grown since fstat
        except OSError as error:
            raise UnreadableImageError(path, f"cannot read file ({error.strerror or error})") from None
    _check_size(path, len(payload), limits)
    return payload


def _check_size(name: str | os.PathLike, size: int, limits: ImageLimits) -> None:
    if size == 0:
        raise UnreadableImageError(name, "empty file (0 bytes)")
    if size > limits.max_bytes:
        raise ImageTooLargeError(name, f"file is {size:,} bytes, over the limit of {limits.max_bytes:,} bytes")


def decode_image(payload: bytes, limits: ImageLimits = ImageLimits(), name: str | os.PathLike = "<bytes>") -> Image.Image:
    """Decode encoded image bytes into an upright RGB `PIL.Image`, or raise an `ImageError` naming `name`.

    The same limits and error kinds as `load_image`, for photos that arrive as bytes.

    >>> decode_image(upload.read(), name=upload.filename).size  # doctest: +SKIP
    (640, 480)
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode_image expects encoded image bytes, got {type(payload).__name__}")
    _check_size(name, len(payload), limits)
    try:
        with warnings.catch_warnings():
            # Pillow warns (not raises) between max_pixels and 2x; we decide ourselves.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(payload)) as image:
                if image.format not in _ACCEPTED_FORMATS:
                    raise UnsupportedFormatError(
                        name, f"format {image.format or 'unknown'} is not one of JPEG, PNG, BMP, WEBP, GIF"
                    )
                width, height = image.size
                if width * height > limits.max_pixels:
                    raise DecompressionBombError(
                        name,
                        f"{width}x{height} = {width * height:,} pixels, over the limit of "
                        f"{limits.max_pixels:,} (possible decompression bomb)",
                    )
                if width == 0 or height == 0:
                    raise UnreadableImageError(name, f"image has no pixels ({width}x{height})")
                image.seek(0)  # first frame of animated GIF/WEBP/PNG
                image.load()
                image = ImageOps.exif_transpose(image)
                return _to_rgb(image).copy()
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise DecompressionBombError(name, f"possible decompression bomb ({error})") from None
    except UnidentifiedImageError:
        raise UnreadableImageError(name, "not a recognisable image (corrupt or wrong format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        # Truncated files raise OSError("image file is truncated ..."); broken headers raise
        # SyntaxError or ValueError inside the plugins.
        raise UnreadableImageError(name, f"cannot decode image ({error})") from None


def decode_image_array(payload: bytes, limits: ImageLimits = ImageLimits(), name: str | os.PathLike = "<bytes>") \
        -> np.ndarray:
    """Like `decode_image`, as a `uint8` array of shape (height, width, 3)."""
    return np.asarray(decode_image(payload, limits, name), dtype=np.uint8)


def load_image(path: str | os.PathLike, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Read and decode `path` into an upright RGB `PIL.Image`, or raise an `ImageError`.

    >>> load_image("photos/watch.jpg").size  # doctest: +SKIP
    (640, 480)
    """
    return decode_image(read_image_bytes(path, limits), limits, path)


def load_image_array(path: str | os.PathLike, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Like `load_image`, as a `uint8` array of shape (height, width, 3)."""
    return np.asarray(load_image(path, limits), dtype=np.uint8)

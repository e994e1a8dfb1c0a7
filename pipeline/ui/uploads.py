"""Uploaded files as images: size-checked while read, decoded to prove they are images (the
name and the declared type are not trusted), through the same loader as every other image."""

from __future__ import annotations

import os
import tempfile
from typing import BinaryIO

from PIL import Image

from detcrop.data.images import ImageError, ImageLimits, load_image

_CHUNK = 1 << 20


class UploadRefused(Exception):
    """An uploaded file that is not used; `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def read_image_upload(stream: BinaryIO, max_bytes: int) -> Image.Image:
    """Decode an uploaded file into an upright RGB image, or raise `UploadRefused`.

    Reading stops one chunk after `max_bytes`, so a huge upload is refused without being
    held in memory; the bytes are decoded by `data.images.load_image` (JPEG, PNG, BMP,
    WEBP, GIF; decompression bombs refused).
    """
    descriptor, path = tempfile.mkstemp(prefix="detcrop-upload-", suffix=".img")
    try:
        size = 0
        with os.fdopen(descriptor, "wb") as handle:
            while chunk := stream.read(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise UploadRefused(f"file is over the limit of {max_bytes / 2**20:g} MB")
                handle.write(chunk)
        if size == 0:
            raise UploadRefused("empty file")
        try:
            return load_image(path, ImageLimits(max_bytes=max_bytes))
        except ImageError as error:
            raise UploadRefused(error.reason) from None
    finally:
        os.unlink(path)

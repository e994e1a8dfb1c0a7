"""Uploaded files as images: size-checked while read, decoded to prove they are images (the
name and the declared type are not trusted), with the same limits and reasons as files on disk."""

from __future__ import annotations

from typing import BinaryIO

from PIL import Image

from detcrop.data.images import ImageError, ImageLimits, decode_image

_CHUNK = 1 << 20


class UploadRefused(Exception):
    """An uploaded file that is not used; `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def read_upload(stream: BinaryIO, max_bytes: int) -> bytes:
    """The bytes of an upload; `UploadRefused` once it passes `max_bytes` (reading stops there)."""
    chunks, size = [], 0
    while chunk := stream.read(_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise UploadRefused(f"file is over the limit of {max_bytes / 2**20:g} MB")
        chunks.append(chunk)
    if not size:
        raise UploadRefused("empty file")
    return b"".join(chunks)


def read_image_upload(stream: BinaryIO, max_bytes: int, name: str = "upload") -> Image.Image:
    """The upright RGB image of an upload, or `UploadRefused` with the reason.

    Decoded by `data.images.decode_image`: JPEG, PNG, BMP, WEBP, GIF; decompression bombs refused.
    """
    payload = read_upload(stream, max_bytes)
    try:
        return decode_image(payload, ImageLimits(max_bytes=max_bytes), name)
    except ImageError as error:
        raise UploadRefused(error.reason) from None

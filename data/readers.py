"""Readers of dataset file formats: CIFAR python-pickle batches and IDX files (MNIST, Fashion-MNIST).

Each reader takes one file and returns numpy arrays, or raises `DatasetError` naming the file and
what was expected. CIFAR pickles are read with a restricted unpickler that rebuilds dicts, lists,
bytes and numpy arrays and refuses every other global, so a crafted pickle cannot run code.
Where the files are found, and how they become a train/test dataset, is the caller's business
(`detcrop.classify.baseline.data`).
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path
from typing import IO

import numpy as np

from detcrop.data.errors import DetcropError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_ALLOWED_PICKLE_GLOBALS = frozenset({
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # Python 3 pickles of numpy bytes use it
})



class DatasetError(DetcropError, ValueError):
    """A dataset file or folder that is missing or not in the expected format."""



# --------------------------------------------------------------------------- CIFAR python pickles


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, bytes and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) in _ALLOWED_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset pickle")


def _text_keys(value: dict) -> dict:
    return {key.decode("utf-8") if isinstance(key, bytes) else key: item for key, item in value.items()}


def read_pickle(path: str | os.PathLike) -> dict:
    """A pickled dict of numpy arrays (a CIFAR batch or ``batches.meta``), its byte keys made text."""
    try:
        with open(path, "rb") as handle:
            value = _ArrayUnpickler(handle, encoding="bytes").load()
    except FileNotFoundError:
        raise DatasetError(f"{path}: CIFAR batch file not found") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise DatasetError(f"{path}: expected a CIFAR python-pickle batch, cannot unpickle ({error})") from None
    if not isinstance(value, dict):
        raise DatasetError(f"{path}: expected a pickled dict, got {type(value).__name__}")
    return _text_keys(value)


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch -> (uint8 images (N, 32, 32, 3), int64 labels (N,)).

    The file is a pickled dict with ``data`` (N x 3072 uint8, channel-major: 1024 red, 1024
    green, 1024 blue values, rows top to bottom) and ``labels`` (N ints).
    """
    path = Path(path)
    batch = read_pickle(path)
    if "data" not in batch or "labels" not in batch:
        raise DatasetError(f"{path}: expected keys 'data' and 'labels', got {sorted(map(str, batch))}")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{path}: expected 'data' uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (len(data),):
        raise DatasetError(f"{path}: expected {len(data)} labels, got shape {labels.shape}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels



# --------------------------------------------------------------------------- IDX


def _open_maybe_gzip(path: Path) -> IO[bytes]:
    with open(path, "rb") as handle:
        magic = handle.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (plain or gzip, recognised by content) -> numpy array of its shape and type.

    Header: two zero bytes, a type byte (0x08 = uint8 ...), the number of dimensions, then
    one big-endian uint32 size per dimension.
    """
    path = Path(path)
    try:
        with _open_maybe_gzip(path) as handle:
            payload = handle.read()
    except FileNotFoundError:
        raise DatasetError(f"{path}: IDX file not found") from None
    except (OSError, EOFError) as error:
        raise DatasetError(f"{path}: cannot read IDX file ({error})") from None
    if len(payload) < 4 or payload[0] != 0 or payload[1] != 0 or payload[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path}: expected an IDX header (0x00 0x00 type ndim), got {payload[:4].hex() or 'empty file'}")
    dtype = np.dtype(_IDX_DTYPES[payload[2]])
    ndim = payload[3]
    header_size = 4 + 4 * ndim
    shape = tuple(int(size) for size in np.frombuffer(payload, ">u4", count=ndim, offset=4)) if len(payload) >= header_size else None
    expected = None if shape is None else header_size + int(np.prod(shape)) * dtype.itemsize
    if shape is None or len(payload) != expected:
        raise DatasetError(
            f"{path}: IDX header says shape {shape} ({expected} bytes), file has {len(payload)} bytes"
        )
    return np.frombuffer(payload, dtype, offset=header_size).reshape(shape).astype(dtype.newbyteorder("="))


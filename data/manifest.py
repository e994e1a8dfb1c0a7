"""The crop manifest: one JSON line per written crop, or per photo that gave none.

Appends are crash-safe: each record is one `write` of one full line followed by fsync, so
a kill can only leave a final line without its newline, which readers drop (and
`ManifestWriter` cuts off before appending again). Whole-manifest rewrites are atomic.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, Iterator

from detcrop.data import layout
from detcrop.data.streams import JsonLinesWriter
from detcrop.data.atomic import atomic_open
from detcrop.data.errors import DetcropError

logger = logging.getLogger(__name__)

#: File name of the manifest inside a cropped dataset's root (defined in data.layout).
MANIFEST_NAME = layout.MANIFEST_NAME
#: Bumped when a field changes meaning; readers refuse newer versions.
MANIFEST_VERSION = 1

#: Values of `CropRecord.status`.
STATUS_CROPPED = "cropped"  # a crop file was written
STATUS_EMPTY = "empty"  # the photo was read but no target object passed the filters
STATUS_FAILED = "failed"  # the photo could not be read or processed


@dataclass(frozen=True)
class CropRecord:
    """Where one crop came from, or why a photo gave none.

    Boxes are pixel `[x_min, y_min, x_max, y_max]` in the upright source photo (after EXIF
    orientation). Paths are stored relative to the manifest's folder where possible.
    """

    source_path: str  # the photo, as given on the command line or found in the input folder
    source_sha256: str | None  # content hash of the photo's bytes (None when unreadable)
    status: str  # "cropped", "empty" or "failed"
    label: str | None = None  # class folder the crop was written to
    path: str | None = None  # the crop file, relative to the dataset root
    sha256: str | None = None  # content hash of the crop file's bytes
    box: tuple[float, float, float, float] | None = None  # detector box, pixels, xyxy
    crop_box: tuple[int, int, int, int] | None = None  # region actually cut (margin, square)
    score: float | None = None  # detector confidence of the box
    class_id: int | None = None  # detector class id (COCO 90-id map)
    class_name: str | None = None  # detector class name, e.g. "clock"
    detector: str | None = None  # detector name or handle
    index: int | None = None  # rank of this crop within its photo (0 = best)
    reason: str | None = None  # why the photo is empty or failed, or why a box was rejected
    version: int = MANIFEST_VERSION

    def __post_init__(self) -> None:
        if self.status not in (STATUS_CROPPED, STATUS_EMPTY, STATUS_FAILED):
            raise ValueError(f"status must be cropped, empty or failed, got {self.status!r}")
        if self.status == STATUS_CROPPED and (self.path is None or self.label is None):
            raise ValueError(f"a cropped record needs path and label: {self.source_path}")
        if self.status != STATUS_CROPPED and not self.reason:
            raise ValueError(f"a {self.status} record needs a reason: {self.source_path}")
        for name in ("box", "crop_box"):
            value = getattr(self, name)
            if value is not None:
                if len(value) != 4:
                    raise ValueError(f"{name} must have 4 numbers xyxy, got {value!r}")
                object.__setattr__(self, name, tuple(value))

    def to_json(self) -> str:
        """One JSON line (no newline), keys sorted, optional None fields omitted."""
        return json.dumps(
            {key: value for key, value in asdict(self).items() if value is not None or key == "source_sha256"},
            sort_keys=True,
            ensure_ascii=False,
        )

    @classmethod
    def from_dict(cls, values: dict) -> "CropRecord":
        known = {field.name for field in fields(cls)}
        version = values.get("version", MANIFEST_VERSION)
        if version > MANIFEST_VERSION:
            raise ValueError(f"manifest record version {version} is newer than {MANIFEST_VERSION}")
        return cls(**{key: value for key, value in values.items() if key in known})


class ManifestError(DetcropError, ValueError):
    """A manifest line that is not a crop record (the message names the file and line)."""


def read_manifest(path: str | os.PathLike) -> list[CropRecord]:
    """All complete records of a manifest; an unterminated last line (a killed write) is dropped."""
    return list(iter_manifest(path))


def iter_manifest(path: str | os.PathLike) -> Iterator[CropRecord]:
    path = Path(path)
    if not path.exists():
        return
    with open(path, "r", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.endswith("\n"):
                logger.warning("%s:%d: dropping an unfinished last line", path, line_number)
                return
            if not line.strip():
                continue
            try:
                yield CropRecord.from_dict(json.loads(line))
            except (json.JSONDecodeError, TypeError, ValueError) as error:
                raise ManifestError(f"{path}:{line_number}: not a manifest record ({error})") from None


def write_manifest(path: str | os.PathLike, records: Iterable[CropRecord]) -> None:
    """Replace the manifest at `path` atomically with `records`."""
    with atomic_open(path, "w") as handle:
        for record in records:
            handle.write(record.to_json() + "\n")


class ManifestWriter(JsonLinesWriter):
    """Appends crop records one durable line at a time; safe to reopen after a kill.

    >>> with ManifestWriter("dataset/manifest.jsonl") as writer:  # doctest: +SKIP
    ...     writer.append(record)
    """

    def append(self, record: CropRecord) -> None:
        self.write_line(record.to_json())

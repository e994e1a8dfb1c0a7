"""The COCO label map (90-id numbering, with its gaps) and target-class resolution."""

from __future__ import annotations

import difflib
import json
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping

from detcrop.data.config import ConfigError

#: The label map shipped with the package (`detect/coco_labels.json`).
COCO_LABELS_PATH = Path(__file__).with_name("coco_labels.json")


@lru_cache(maxsize=1)
def _coco_labels() -> tuple[tuple[int, str], ...]:
    values = json.loads(COCO_LABELS_PATH.read_text(encoding="utf-8"))["labels"]
    return tuple(sorted((int(key), name) for key, name in values.items()))


def coco_labels() -> dict[int, str]:
    """COCO class id -> name, e.g. `coco_labels()[85] == "clock"` (80 names over ids 1..90)."""
    return dict(_coco_labels())


def resolve_class_ids(targets: Iterable[str | int], label_map: Mapping[int, str] | None = None) -> tuple[int, ...]:
    """Class ids for target names or ids (as ints or digit strings), in the order given.

    Raises `ValueError` for an unknown name (suggesting the nearest one) or an unused id.

    >>> resolve_class_ids(["clock", "44"])
    (85, 44)
    """
    label_map = dict(label_map if label_map is not None else coco_labels())
    by_name = {name.lower(): class_id for class_id, name in label_map.items()}
    resolved: list[int] = []
    for target in targets:
        text = str(target).strip()
        if text.lstrip("-").isdigit():
            class_id = int(text)
            if class_id not in label_map:
                raise ConfigError(
                    f"target class id {class_id} is not in the label map (ids {min(label_map)}..{max(label_map)}, "
                    f"with gaps); see {COCO_LABELS_PATH.name}"
                )
        else:
            class_id = by_name.get(text.lower().replace("_", " "))
            if class_id is None:
                nearest = difflib.get_close_matches(text.lower(), list(by_name), n=3)
                hint = f"; did you mean {', '.join(repr(name) for name in nearest)}?" if nearest else ""
                raise ConfigError(f"target class {text!r} is not a COCO class name{hint}")
        if class_id not in resolved:
            resolved.append(class_id)
    if not resolved:
        raise ConfigError("expected at least one target class (a COCO name such as 'clock', or an id), got none")
    return tuple(resolved)

"""Where detcrop keeps what it can recompute: `$XDG_CACHE_HOME/detcrop/...`, else `~/.cache/detcrop/...`.

A cached file is data an earlier run wrote, maybe half-written, damaged or copied from elsewhere.
`cached_file` keeps one beside a sidecar, ``<entry>.source.json``, written only after the entry
is complete: it records the digest of what the entry was made from and the entry's own digest.
An entry is used only when its sidecar names the source asked for and the entry's bytes still
hash to the recorded digest; anything else is a miss (one warning naming the file) and is rebuilt.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Callable, TypeVar

from detcrop.data.atomic import atomic_write_bytes, atomic_write_json
from detcrop.data.images import file_sha256

logger = logging.getLogger(__name__)

#: Suffix of the sidecar that vouches for a cached file.
SIDECAR_SUFFIX = ".source.json"

Loaded = TypeVar("Loaded")


def cache_dir(*parts: str) -> Path:
    """`$XDG_CACHE_HOME/detcrop/<parts>`, else `~/.cache/detcrop/<parts>` (not created here)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "detcrop", *parts)


def sidecar_path(entry: str | os.PathLike) -> Path:
    entry = Path(entry)
    return entry.with_name(entry.name + SIDECAR_SUFFIX)


def _vouched_for(entry: Path, source_sha256: str) -> str | None:
    """None when `entry` is a complete entry made from `source_sha256`; else why it is not."""
    try:
        record = json.loads(sidecar_path(entry).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no record of what it was made from"
    except (OSError, ValueError) as error:
        return f"its record is unreadable ({error})"
    if not isinstance(record, dict) or record.get("source_sha256") != source_sha256:
        return "it was made from something else"
    try:
        if file_sha256(entry) != record.get("entry_sha256"):
            return "its content changed after it was written (truncated or replaced)"
    except OSError as error:
        return f"unreadable ({error})"
    return None


def discard_entry(entry: str | os.PathLike, reason: str) -> None:
    """Warn once naming `entry` and why it is not used, and remove it and its sidecar."""
    entry = Path(entry)
    logger.warning("%s: cache entry not used (%s); rebuilding it", entry, reason)
    for path in (entry, sidecar_path(entry)):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def cached_file(entry: str | os.PathLike, source_sha256: str, build: Callable[[], bytes],
                load: Callable[[Path], Loaded]) -> Loaded:
    """`load(entry)` of a checked cache entry made from the source with digest `source_sha256`.

    A missing entry is built (`build()` returns its bytes) and written, then its sidecar. An
    entry that its sidecar does not vouch for, or that `load` refuses (any exception), is
    discarded with one warning and rebuilt once; a freshly built entry that does not load
    raises what `load` raised.

    >>> session = cached_file(cache / "m.onnx", digest, convert, open_session)  # doctest: +SKIP
    """
    entry = Path(entry)
    if entry.exists() or sidecar_path(entry).exists():
        reason = _vouched_for(entry, source_sha256) if entry.is_file() else "not a file"
        if reason is None:
            try:
                return load(entry)
            except Exception as error:  # a loader's own error types (protobuf, onnxruntime) vary
                reason = f"does not load: {type(error).__name__}: {error}"
        discard_entry(entry, reason)
    payload = build()
    atomic_write_bytes(entry, payload)
    # Written after the entry is complete: an entry without it is never used.
    atomic_write_json(sidecar_path(entry), {"source_sha256": source_sha256, "entry_sha256": file_sha256(entry)})
    return load(entry)

"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import functools
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from detcrop.data.errors import DetcropError, OutputWriteError, describe_os_error


@functools.lru_cache(maxsize=1)
def current_umask() -> int:
    """The process umask, read once (by setting and restoring it: there is no getter, and
    doing that while other threads create files would race)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path`; on success fsync it and rename it over `path`.

    On an exception the temporary file is removed and `path` is left untouched.

    >>> with atomic_open("out/model.json", "w") as handle:  # doctest: +SKIP
    ...     handle.write("{}")
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The ".part" suffix keeps half-written files recognisable and out of image scans.
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as error:
        raise _write_error(path, error) from None
    # mkstemp makes the file private (0600); give it the mode a plain open() would have.
    os.fchmod(descriptor, 0o666 & ~current_umask())
    try:
        with os.fdopen(descriptor, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        if isinstance(error, OSError) and not isinstance(error, DetcropError) and error.errno is not None:
            # A full disk says ENOSPC without a path; the user needs to know which output failed.
            raise _write_error(path, error) from None
        raise


def _write_error(path: Path, error: OSError) -> OutputWriteError:
    refused = OutputWriteError(f"cannot write {path}: {describe_os_error(error)}")
    refused.errno = error.errno
    return refused


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write `payload` to `path` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(payload)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike, value: Any) -> None:
    """Write `value` as indented, key-sorted JSON to `path` atomically."""
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


class StagingFolder:
    """A hidden folder beside `target` to fill before renaming it into place; locked while open.

    Its name, ``.<target name>.detcrop-<tag>-<random>.part``, is one only detcrop makes, and
    it holds an exclusive `flock` for as long as the writer lives, so `remove_stale_staging`
    can tell a folder left by a killed job (no lock) from one in use. The kernel drops the lock
    when the process dies, however it dies.

    >>> with StagingFolder("export/", "export") as staging:  # doctest: +SKIP
    ...     (staging.path / "labels.txt").write_text("a\\n")
    ...     os.replace(staging.path, "export/")
    """

    def __init__(self, target: str | os.PathLike, tag: str):
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=_staging_prefix(target, tag), suffix=".part", dir=target.parent))
        os.chmod(self.path, 0o777 & ~current_umask())  # mkdtemp's 0700 would make the result private
        self._descriptor = _lock_folder(self.path, blocking=True)

    def close(self) -> None:
        """Drop the lock (the folder stays wherever it was renamed to)."""
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None

    def __enter__(self) -> "StagingFolder":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _staging_prefix(target: Path, tag: str) -> str:
    return f".{target.name}.detcrop-{tag}-"


def _lock_folder(path: Path, blocking: bool) -> int | None:
    """An open descriptor of `path` holding an exclusive flock; None when another process holds it."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no lock, and nothing is ever seen as stale
        return None
    descriptor = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


def remove_stale_staging(target: str | os.PathLike, tag: str) -> list[Path]:
    """Remove staging folders of `target` (see `StagingFolder`) that no live process holds.

    Only folders named as `StagingFolder` names them are touched; returns those removed.
    """
    import glob
    import shutil

    target = Path(target)
    removed = []
    if not target.parent.is_dir():
        return removed
    for candidate in sorted(target.parent.glob(f"{glob.escape(_staging_prefix(target, tag))}*.part")):
        if candidate.is_symlink() or not candidate.is_dir():
            continue
        descriptor = _lock_folder(candidate, blocking=False)
        if descriptor is None:
            continue  # a running job's folder
        try:
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
        finally:
            os.close(descriptor)
    return removed


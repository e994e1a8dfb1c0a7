"""Where a command may write: never into, over or around what it reads.

Every command that writes checks each output path with `check_output_path` before it writes
anything, so `predict RUN ... --json RUN/bundle.json` cannot overwrite the bundle it scores
with, and `train DATASET --out DATASET/run` cannot turn its report PNGs into training images.
Paths are compared after resolving symbolic links, so a link does not get around the rule.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Tuple, Union

from detcrop.data.errors import DetcropError, OutputWriteError, describe_os_error

#: (what the path is, for the message; the path). None paths are ignored.
NamedPath = Tuple[str, Union[str, os.PathLike, None]]


class OutputPathError(DetcropError, ValueError):
    """An output path that would write into, over or around an input; the message names both."""


def _resolved(path: str | os.PathLike) -> Path:
    # resolve() follows every link that exists and keeps the missing tail as written.
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path)))).resolve()


def check_output_path(output: str | os.PathLike, flag: str, inputs: Iterable[NamedPath] = (),
                      protected: Iterable[NamedPath] = (), kind: str | None = None) -> Path:
    """`output` as a `Path` when writing it leaves every input and protected path alone.

    - `inputs`: what the command reads. The output must not be one, lie inside one, or hold
      one (a folder output containing the photos could write a plot over a photo, and a
      dataset written around its own input would read it as a class).
    - `protected`: paths the output must not be or lie inside, though it may hold them (a
      run folder may hold the dataset it was trained on: its reports go to its top level).

    - `kind`: "file" (written atomically over `output`: an existing folder, device, FIFO or
      socket there is refused, never replaced) or "folder" (written into: an existing file
      there is refused).

    Raises `OutputPathError` naming the flag, both paths and what to do.

    >>> check_output_path("runs/w/bundle.json", "--json", inputs=[("the run folder", "runs/w")])  # doctest: +SKIP
    Traceback (most recent call last):
    OutputPathError: --json runs/w/bundle.json is inside the run folder runs/w (an input of this command); ...
    """
    target = _resolved(output)
    _check_kind(output, flag, kind)
    checks = [(what, path, True, " (an input of this command)") for what, path in inputs]
    checks += [(what, path, False, "") for what, path in protected]
    for what, path, may_not_hold, note in checks:
        if path is None:
            continue
        source = _resolved(path)
        if target == source:
            relation = "is"
        elif target.is_relative_to(source):
            relation = "is inside"
        elif may_not_hold and source.is_relative_to(target):
            relation = "holds"
        else:
            continue
        raise OutputPathError(
            f"{flag} {os.fspath(output)} {relation} {what} {os.fspath(path)}{note}; choose {flag} outside it"
        )
    return Path(output)


def _check_kind(output: str | os.PathLike, flag: str, kind: str | None) -> None:
    if kind is None:
        return
    if kind not in ("file", "folder"):
        raise ValueError(f"kind must be 'file' or 'folder', got {kind!r}")
    path = Path(os.path.expanduser(os.fspath(output)))
    if kind == "folder":
        if path.exists() and not path.is_dir():
            raise OutputPathError(f"{flag} {os.fspath(output)} is a file; expected a folder (new or existing)")
        return
    # An atomic write renames a new file over the path itself (a link is replaced, not followed).
    if path.is_symlink() or not path.exists():
        return
    if path.is_dir():
        raise OutputPathError(f"{flag} {os.fspath(output)} is a folder; expected a file name")
    if not path.is_file():
        raise OutputPathError(f"{flag} {os.fspath(output)} is not a regular file (a device, FIFO or socket); "
                              f"choose a file name")


def check_writable(output: str | os.PathLike, kind: str = "file") -> None:
    """Raise `OutputWriteError` naming `output` when nothing can be written there now.

    Creates the folder that will hold it (the output folder itself for `kind` "folder") and a
    hidden probe file in it, removed at once, so a long job learns before its work, not after,
    that its output is read-only or on a missing drive.
    """
    import tempfile

    output = Path(output)
    folder = output if kind == "folder" else output.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor, probe = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".part", dir=folder)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        raise OutputWriteError(f"cannot write {output}: {describe_os_error(error)}") from None

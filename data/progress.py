"""Status lines for long waits that are not loops (a one-time model conversion).

A loop draws its own tqdm bar when its caller passes ``progress=True``; a single long call has
no loop to count, so it shows one line that ends with the time it took. The command line
turns these off for ``-q`` (`show_status_lines(False)`); library callers get them by default.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from tqdm import tqdm

_enabled = True


def show_status_lines(enabled: bool) -> None:
    """Whether `status_line` draws anything (the `detcrop` command passes False for -q)."""
    global _enabled
    _enabled = bool(enabled)


@contextlib.contextmanager
def status_line(text: str) -> Iterator[None]:
    """One stderr line ``TEXT: mm:ss`` around a long call, left with the time it took.

    >>> with status_line("converting the detector to ONNX (once)"):  # doctest: +SKIP
    ...     payload = convert_ssd_graph(path)
    """
    with tqdm(total=1, desc=text, bar_format="{desc}: {elapsed}", disable=not _enabled) as line:
        yield
        line.update(1)

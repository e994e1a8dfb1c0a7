"""One base class for every failure detcrop expects (bad input, missing weights, refused paths).

The CLI turns a `DetcropError` into one line on stderr and exit code 2; any other exception is
a bug and keeps its traceback. Subclasses also derive from the built-in error they refine
(`ValueError`, `FileNotFoundError`) so callers that catch those keep working.
"""

from __future__ import annotations


class DetcropError(Exception):
    """An expected failure whose message says what was expected and what was received."""

"""One base class for every failure detcrop expects (bad input, missing weights, refused paths).

The CLI turns a `DetcropError` into one line on stderr and exit code 2; any other exception is
a bug and keeps its traceback. Subclasses also derive from the built-in error they refine
(`ValueError`, `FileNotFoundError`) so callers that catch those keep working.
"""

from __future__ import annotations


class DetcropError(Exception):
    """An expected failure whose message says what was expected and what was received."""


class MissingFileError(DetcropError, FileNotFoundError):
    """A file or folder the job needs is not there; the message names it and what to do."""


class NotAFolderError(DetcropError, NotADirectoryError):
    """A path that should be a folder is a file."""


class UsageError(DetcropError, ValueError):
    """A command-line value the job cannot use: out of range, an unknown name, nothing to work on."""


class MissingDependencyError(DetcropError, ImportError):
    """An optional package a feature needs is not installed; the message names the pip command."""


class OutputWriteError(DetcropError, OSError):
    """The system refused to write an output (read-only, full, not a folder); the message names the path."""


def describe_os_error(error: OSError) -> str:
    """'PATH: the system's reason' for an `OSError` (the reason alone when it names no path)."""
    reason = error.strerror or str(error)
    return f"{error.filename}: {reason}" if error.filename is not None else reason

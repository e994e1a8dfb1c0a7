"""What the `detcrop` command shows on the terminal, chosen once in `configure_console`.

Library code only logs (`logging.getLogger(__name__)`) and draws a tqdm bar when asked to;
it never configures either. The command decides what reaches the terminal:

- default: warnings and errors, one progress bar per phase, a closing summary; nothing from
  third-party libraries (tf2onnx, absl, TensorFlow's Python and C++ logs, CUDA probes,
  deprecation warnings);
- ``-q``: warnings and errors only, no progress bars;
- ``-v``: detcrop's INFO lines, and third-party output as those libraries print it by default;
  ``-vv`` adds detcrop's DEBUG lines.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
import warnings
from typing import Iterable, Iterator

#: Verbosity levels of `configure_console`.
QUIET, DEFAULT, VERBOSE, DEBUG = -1, 0, 1, 2

#: Loggers of libraries detcrop uses; below -v they show errors only.
THIRD_PARTY_LOGGERS = ("tensorflow", "tf2onnx", "absl", "keras", "h5py", "matplotlib", "PIL", "onnx",
                       "onnxruntime", "ray", "urllib3", "filelock", "fsspec", "jax", "numexpr")

#: Lines TensorFlow's native libraries write to stderr while they load, before their logging honours
#: TF_CPP_MIN_LOG_LEVEL: absl's pre-init notice and INFO/WARNING lines (CUDA probes, oneDNN notice).
_NATIVE_NOISE = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\)"
                           r"|[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.]+:\d+\] ")


class _TqdmHandler(logging.StreamHandler):
    """Writes log records above any progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)  # sys.stderr now, as tests swap it
        except Exception:  # noqa: BLE001 - logging must never raise into the job
            self.handleError(record)


def configure_console(verbosity: int = DEFAULT) -> None:
    """Set up logging, Python warnings and TensorFlow's native logs for one `detcrop` command.

    Call it before anything imports TensorFlow: TF_CPP_MIN_LOG_LEVEL is read at that import.
    Settings a user made (TF_CPP_MIN_LOG_LEVEL in the environment, ``python -W``) are kept.
    """
    quiet_libraries = verbosity < VERBOSE
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _TqdmHandler)]:
        root.removeHandler(handler)  # a second call in one process (tests) replaces the first
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    # detcrop's loggers follow the root, so a test's caplog.at_level still sees their INFO lines.
    root.setLevel(logging.DEBUG if verbosity >= DEBUG else logging.INFO if verbosity >= VERBOSE else logging.WARNING)
    from detcrop.data.progress import show_status_lines

    show_status_lines(verbosity > QUIET)
    library_level = logging.ERROR if quiet_libraries else logging.INFO if verbosity >= DEBUG else logging.NOTSET
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(library_level)
    if not quiet_libraries:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # C++ logs: errors and worse are raised in Python
    if not sys.warnoptions:
        _filter_library_warnings()
    _install_quiet_tensorflow_import()


def _filter_library_warnings() -> None:
    """Hide deprecation, future and user warnings raised in other packages; keep detcrop's own."""
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning, UserWarning, RuntimeWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("default", module=r"detcrop(\.|$)")


@contextlib.contextmanager
def native_stderr_filtered(noise: re.Pattern = _NATIVE_NOISE) -> Iterator[None]:
    """Capture what native code writes to file descriptor 2; replay every line but the `noise`.

    Python's own stderr writes in the block go through the same descriptor and are replayed in
    order. A line matching `noise` is dropped only when it starts the line.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (a detached process): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not noise.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietImportFinder(importlib.abc.MetaPathFinder):
    """Runs the first import of `module` inside `native_stderr_filtered`."""

    def __init__(self, module: str):
        self.module = module

    def find_spec(self, fullname, path, target=None):
        if fullname != self.module:
            return None
        sys.meta_path.remove(self)  # once: the normal finders locate it now
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = self._loader
        with native_stderr_filtered():
            self._loader.exec_module(module)

    def __getattr__(self, name):  # get_data, is_package, ... of the real loader
        return getattr(self._loader, name)


def _install_quiet_tensorflow_import() -> None:
    """TensorFlow's native libraries print their load-time notices before any log level applies."""
    if "tensorflow" in sys.modules or any(isinstance(finder, _QuietImportFinder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietImportFinder("tensorflow"))


def format_summary(title: str, rows: Iterable[tuple[str, object]]) -> str:
    """A closing summary: a title line, then one aligned ``label  value`` row per entry.

    >>> print(format_summary("Cropped 3 photos in 2 s", [("dataset", "out/"), ("crops", 3)]))
    Cropped 3 photos in 2 s
      dataset  out/
      crops    3
    """
    rows = [(label, str(value)) for label, value in rows]
    width = max((len(label) for label, _ in rows), default=0)
    return "\n".join([title, *(f"  {label:<{width}}  {value}" for label, value in rows)])


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s`` or ``1 h 02 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"

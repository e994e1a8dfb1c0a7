"""Which runtime runs the models: ONNX Runtime where it is installed, else TensorFlow.

`--runtime` (crop, predict, train's feature pass) defaults to "auto": ONNX Runtime when
onnxruntime and tf2onnx are importable (the `export` extra; chosen by measurement:
benchmarks/RESULTS.md#runtime) and the model converts (the SSD frozen graph, an .onnx file, a Keras backbone or
classifier), else TensorFlow, said once in an info line. "tensorflow" and "onnx" force one.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os

logger = logging.getLogger(__name__)

#: What `--runtime` accepts; "auto" is the default everywhere.
RUNTIMES = ("auto", "onnx", "tensorflow")
AUTO = "auto"


@functools.cache
def onnx_installed() -> bool:
    """True when ONNX Runtime and tf2onnx can be imported (checked without importing them)."""
    missing = [name for name in ("onnxruntime", "tf2onnx") if importlib.util.find_spec(name) is None]
    if missing:
        logger.info("--runtime auto: %s not installed, so models run in TensorFlow "
                    "(pip install 'detcrop[export]' for ONNX Runtime)", " and ".join(missing))
    return not missing


def resolve_runtime(runtime: str) -> str:
    """"onnx" or "tensorflow" for a `--runtime` value ("auto": ONNX Runtime when installed)."""
    if runtime == AUTO:
        return "onnx" if onnx_installed() else "tensorflow"
    return runtime


#: Most batches a job scores at once on one machine (each holds its decoded photos in memory).
MAX_PARALLEL_BATCHES = 4


def parallel_split(cores: int | None = None) -> tuple[int, int]:
    """(batches scored at once, ONNX Runtime threads per model call) for a job on `cores` cores (default: this
    process's).

    Small models use a core each better than they split one photo over several
    (RESULTS.md#parallel-jobs), so a 2-core machine scores two batches at once on one thread each.
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = max(1, int(cores))
    threads = -(-cores // MAX_PARALLEL_BATCHES)  # the fewest threads per call that keep to the cap
    return cores // threads, threads


__all__ = ["AUTO", "MAX_PARALLEL_BATCHES", "RUNTIMES", "onnx_installed", "parallel_split", "resolve_runtime"]

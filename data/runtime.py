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


__all__ = ["AUTO", "RUNTIMES", "onnx_installed", "resolve_runtime"]

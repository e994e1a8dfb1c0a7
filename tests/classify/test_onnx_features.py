"""train --runtime onnx: the feature pass in ONNX Runtime fills the cache with TensorFlow's features."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("keras")
pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

from detcrop.classify.training import train  # noqa: E402
from test_classify_training import make_dataset, quick_config  # noqa: E402


def test_onnx_feature_pass_fills_the_cache_with_tensorflows_features(tmp_path):
    dataset = make_dataset(tmp_path / "data", per_class=4)
    runs = {}
    for runtime in ("tensorflow", "onnx"):
        config = quick_config(tmp_path, epochs=1, runtime=runtime, cache_dir=str(tmp_path / f"cache-{runtime}"))
        runs[runtime] = train(dataset, tmp_path / f"run-{runtime}", config, progress=False)
        assert runs[runtime].metrics["feature_cache"]["computed"] == 12
    tf_files = sorted((tmp_path / "cache-tensorflow").rglob("*.npy"))
    onnx_files = sorted((tmp_path / "cache-onnx").rglob("*.npy"))
    assert [path.name for path in tf_files] == [path.name for path in onnx_files] and len(tf_files) == 24
    for expected, received in zip(tf_files, onnx_files):
        np.testing.assert_allclose(np.load(received), np.load(expected), atol=1e-5)


def test_unknown_runtime_is_refused(tmp_path):
    with pytest.raises(ValueError, match="runtime must be one of auto, onnx, tensorflow"):
        quick_config(tmp_path, runtime="tflite")

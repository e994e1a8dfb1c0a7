"""train --runtime onnx: the feature pass in ONNX Runtime fills the cache with TensorFlow's features."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("keras")
pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

from detcrop.classify.training import train  # noqa: E402
from test_classify_training import make_dataset, quick_config  # noqa: E402


@pytest.mark.parametrize("train_from", ["", "conv2"])
def test_onnx_feature_pass_fills_the_cache_with_tensorflows_features(tmp_path, train_from):
    """The whole base's pooled features, or (partial fine-tuning) the maps at the cut, cached as float16."""
    dataset = make_dataset(tmp_path / "data", per_class=5)
    runs = {}
    for runtime in ("tensorflow", "onnx"):
        config = quick_config(tmp_path, epochs=1, runtime=runtime, cache_dir=str(tmp_path / f"cache-{runtime}"),
                              train_from=train_from, partial_epochs=1)
        runs[runtime] = train(dataset, tmp_path / f"run-{runtime}", config, progress=False)
        assert runs[runtime].metrics["feature_cache"]["computed"] == 15
    tf_files = sorted((tmp_path / "cache-tensorflow").rglob("*.npy"))
    onnx_files = sorted((tmp_path / "cache-onnx").rglob("*.npy"))
    assert [path.name for path in tf_files] == [path.name for path in onnx_files] and len(tf_files) == 30
    assert all(("activations" in path.parts) == bool(train_from) for path in tf_files)
    for expected, received in zip(tf_files, onnx_files):
        expected, received = np.load(expected), np.load(received)
        # float16 maps may round to neighbouring values: one float16 step apart at most.
        tolerance = {"rtol": 2e-3, "atol": 1e-4} if train_from else {"atol": 1e-5}
        np.testing.assert_allclose(received.astype(np.float32), expected.astype(np.float32), **tolerance)


def test_unknown_runtime_is_refused(tmp_path):
    with pytest.raises(ValueError, match="runtime must be one of auto, onnx, tensorflow"):
        quick_config(tmp_path, runtime="tflite")

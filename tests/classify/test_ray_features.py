"""`detcrop train --engine ray`: the feature pass on a local Ray (2 workers) fills the local pass's cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("keras")

from detcrop.classify.training import train  # noqa: E402
from detcrop.data.images import is_image_path  # noqa: E402
from detcrop.data.ray_runtime import RaySettings  # noqa: E402
from detcrop.pipeline.cli import main  # noqa: E402
from test_classify_training import quick_config  # noqa: E402

BRANDS = ("cartier", "omega", "seiko")


def watches_dataset(shared_data, root, per_brand: int = 10):
    """ROOT/<brand>/ with links to `per_brand` real photos of each of three brands, and one broken file."""
    for brand in BRANDS:
        (root / brand).mkdir(parents=True)
        photos = sorted(path for path in (shared_data / "watches-brands" / brand).iterdir() if is_image_path(path))
        for photo in photos[:per_brand]:
            (root / brand / photo.name).symlink_to(photo)
    (root / "omega" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def _cached(cache_dir):
    return {path.name: np.load(path) for path in sorted(cache_dir.rglob("*.npy"))}


@pytest.mark.shared
@pytest.mark.parametrize("train_from", ["", "conv2"])
def test_ray_feature_pass_fills_the_local_cache_and_resumes(shared_data, tmp_path, monkeypatch, train_from):
    """The whole base's pooled features, or (partial fine-tuning) the maps at the cut."""
    pytest.importorskip("ray.data")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    dataset = watches_dataset(shared_data, tmp_path / "data")
    # Locally in TensorFlow; on Ray with the default runtime (ONNX Runtime actors where installed).
    local_config = quick_config(tmp_path, epochs=1, runtime="tensorflow", cache_dir=str(tmp_path / "cache-local"),
                                train_from=train_from, partial_epochs=1)
    local = train(dataset, tmp_path / "run-local", local_config, progress=False)
    ray_config = quick_config(tmp_path, epochs=1, cache_dir=str(tmp_path / "cache-ray"), train_from=train_from,
                              partial_epochs=1)
    distributed = train(dataset, tmp_path / "run-ray", ray_config, progress=False, ray=RaySettings(workers=2))

    # The same cache entries (30 photos, each with its mirror), the same features within 1e-5.
    assert local.metrics["feature_cache"]["computed"] == distributed.metrics["feature_cache"]["computed"] == 30
    expected, received = _cached(tmp_path / "cache-local"), _cached(tmp_path / "cache-ray")
    assert len(expected) == 60 and expected.keys() == received.keys()
    assert len(list((tmp_path / "cache-ray" / "activations").rglob("*.npy"))) == (60 if train_from else 0)
    for name, features in expected.items():
        # float16 maps may round to neighbouring values: one float16 step apart at most.
        tolerance = {"rtol": 2e-3, "atol": 1e-4} if train_from else {"atol": 1e-5}
        np.testing.assert_allclose(received[name].astype(np.float32), features.astype(np.float32), err_msg=name,
                                   **tolerance)
    # The broken file is skipped and named, as by the local pass; the run completes with a bundle.
    assert [path for path, _ in distributed.skipped] == [path for path, _ in local.skipped] == \
        [str(dataset / "omega" / "broken.jpg")]
    assert (tmp_path / "run-ray" / "model.keras").is_file()

    # Resumable: a second run through the CLI finds every feature in the cache and computes none;
    # the broken file is remembered as undecodable, so Ray does not even start.
    import detcrop.classify.ray_features as ray_features

    def no_ray(*args, **kwargs):
        raise AssertionError("a rerun with every image cached or known unreadable started Ray")

    monkeypatch.setattr(ray_features, "ray_session", no_ray)
    assert main(["train", str(dataset), "--out", str(tmp_path / "run-ray"), "--backbone", "scratch",
                 "--input-size", "32", "--epochs", "1", "--cache-dir", str(tmp_path / "cache-ray"), "--engine", "ray",
                 "--ray-workers", "2", "--train-from", train_from, "--partial-epochs", "1", "-q"]) == 0
    metrics = json.loads((tmp_path / "run-ray" / "metrics.json").read_text())
    assert metrics["feature_cache"]["computed"] == 0 and metrics["feature_cache"]["cached"] == 30
    assert [item["path"] for item in metrics["skipped"]] == [str(dataset / "omega" / "broken.jpg")]


@pytest.mark.shared
def test_a_tensorflow_actor_computes_the_drivers_features_from_its_shipped_weights(shared_data, tmp_path):
    """The actor of `--runtime tensorflow`, called in-process: architecture rebuilt, driver's weights loaded."""
    pytest.importorskip("ray")
    from detcrop.classify.features import LocalFeaturePass, build_feature_model
    from detcrop.classify.ray_features import FeatureActor, _weights_bytes

    dataset = watches_dataset(shared_data, tmp_path / "data", per_brand=2)
    paths = sorted(str(path) for path in dataset.rglob("*.jpg"))
    model = build_feature_model("scratch", 32, None, seed=3)[0]  # not the actor's seed: the weights must travel
    actor = FeatureActor("scratch", 32, 0, ("orig", "flip"), tuple(model.output_shape[1:]),
                         weights=_weights_bytes(model))
    rows = actor({"bytes": [open(path, "rb").read() for path in paths], "path": paths})
    expected = dict(LocalFeaturePass(model, 32)(paths, ("orig", "flip")))
    broken = paths.index(str(dataset / "omega" / "broken.jpg"))
    assert expected[broken] == rows["error"][broken] and "not a recognisable image" in rows["error"][broken]
    for position, features in expected.items():
        if position != broken:
            assert rows["error"][position] == ""
            for variant in ("orig", "flip"):
                np.testing.assert_allclose(rows[variant][position], features[variant], atol=1e-5)

"""Cache entries are data an earlier run wrote: checked before use, a bad one is a miss with one
warning naming the file (issue 25, rows 5, 6 and 7); and `train` refuses a class without enough
readable images, as `validate` does (row 4)."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

pytest.importorskip("keras")

from detcrop.data.images import file_sha256
from detcrop.pipeline.cli import main
from test_classify_training import make_dataset, quick_config


def detcrop_warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.levelno >= logging.WARNING and record.name.startswith("detcrop")]


# ---------------------------------------------------------------- row 6: the feature cache
@pytest.mark.parametrize("bad_entry, problem", [
    (lambda shape: np.zeros((shape[0] + 3,), np.float32), "shape"),
    (lambda shape: np.zeros((2, *shape), np.float32), "shape"),
    (lambda shape: np.full(shape, np.nan, np.float32), "non-finite"),
    (lambda shape: np.full(shape, np.inf, np.float32), "non-finite"),
    (lambda shape: np.zeros(shape, np.float64), "dtype"),
    (lambda shape: np.zeros(shape, np.int32), "dtype"),
])
def test_a_bad_feature_cache_entry_is_recomputed_with_one_warning(tmp_path, caplog, bad_entry, problem):
    from detcrop.classify.features import FeatureCache, build_feature_model, extract_features

    dataset = make_dataset(tmp_path / "data", per_class=2)
    paths = sorted(dataset.rglob("*.png"))
    sha256s = [file_sha256(path) for path in paths]
    model, source, _, _ = build_feature_model("scratch", 32)
    cache = FeatureCache(tmp_path / "cache", "scratch", 32, source)
    good = extract_features(paths, sha256s, model, cache, 32, progress=False).features["orig"]
    shape = good.shape[1:]
    damaged = cache.path(sha256s[0])
    np.save(damaged, bad_entry(shape), allow_pickle=False)
    with caplog.at_level(logging.WARNING, logger="detcrop.classify.features"):
        again = extract_features(paths, sha256s, model, cache, 32, progress=False)
    warnings = detcrop_warnings(caplog)
    assert len(warnings) == 1 and str(damaged) in warnings[0] and problem in warnings[0]
    assert again.computed == 1 and again.cached == len(paths) - 1
    np.testing.assert_allclose(again.features["orig"], good, atol=1e-5)
    assert np.load(damaged).shape == shape  # rewritten, so the next run reads it from the cache


def test_train_recomputes_a_bad_feature_cache_entry(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", per_class=6)
    argv = ["train", str(data), "--backbone", "scratch", "--image-size", "32", "--epochs", "1",
            "--val-ratio", "0.34", "--cache-dir", str(tmp_path / "cache"), "-q"]
    assert main([*argv, "--out", str(tmp_path / "run1")]) == 0
    entry = next((tmp_path / "cache").rglob("*.npy"))
    np.save(entry, np.full((7,), np.nan, np.float32), allow_pickle=False)
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "run2")]) == 0


# ---------------------------------------------------------------- rows 5 and 7: the classifier's ONNX cache
@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from detcrop.classify.training import train

    root = tmp_path_factory.mktemp("runs")
    dataset = make_dataset(root / "data", per_class=6)
    for seed in (0, 1):
        train(dataset, root / f"run{seed}", quick_config(root, input_size=32, epochs=1, seed=seed),
              progress=False)
    return dataset, root / "run0", root / "run1"


def _truncate(entry, other):
    entry.write_bytes(entry.read_bytes()[:100])


def _swap_in_another_runs_model(entry, other):
    shutil.copy(other, entry)


def _swap_in_another_run_with_its_record(entry, other):
    from detcrop.data.cache import sidecar_path

    shutil.copy(other, entry)
    shutil.copy(sidecar_path(other), sidecar_path(entry))


@pytest.mark.parametrize("damage", [_truncate, _swap_in_another_runs_model, _swap_in_another_run_with_its_record])
def test_a_bad_classifier_onnx_entry_is_rebuilt_never_used(two_runs, tmp_path, caplog, damage):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    from detcrop.classify.bundle import load_bundle
    from detcrop.classify.onnx_runtime import load_onnx_bundle
    from detcrop.data.images import load_image_array

    dataset, run, other_run = two_runs
    cache = tmp_path / "onnx"
    images = [load_image_array(path) for path in sorted((dataset / "red").iterdir())]
    bundle = load_bundle(run)
    expected = load_onnx_bundle(run, cache_root=cache).predict(images)
    load_onnx_bundle(other_run, cache_root=cache)
    entry, = [path for path in cache.glob("classifier-*.onnx") if file_sha256(run / "model.keras")[:16] in path.name]
    other, = [path for path in cache.glob("classifier-*.onnx") if path != entry]
    damage(entry, other)
    with caplog.at_level(logging.WARNING):
        again = load_onnx_bundle(run, cache_root=cache).predict(images)
    warnings = detcrop_warnings(caplog)
    assert len(warnings) == 1 and str(entry) in warnings[0]
    np.testing.assert_allclose(again, expected, atol=1e-6)
    np.testing.assert_allclose(again, bundle.predict(images), atol=1e-4)


# ---------------------------------------------------------------- row 4: readable images per class
@pytest.mark.parametrize("readable, garbage, refused", [
    (0, 6, True),   # six random-byte .jpg
    (4, 3, True),   # four that open are still too few
    (5, 3, False),  # five that open are enough, whatever else lies there
])
def test_train_refuses_a_class_with_fewer_than_5_readable_images(tmp_path, capsys, readable, garbage, refused):
    data = make_dataset(tmp_path / "data", per_class=6)
    shutil.rmtree(data / "blue")
    (data / "blue").mkdir()
    rng = np.random.default_rng(0)
    source = sorted((data / "red").glob("*.png"))
    for index in range(readable):
        shutil.copy(source[index], data / "blue" / f"ok{index}.png")
    for index in range(garbage):
        (data / "blue" / f"garbage{index}.jpg").write_bytes(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
    code = main(["train", str(data), "--out", str(tmp_path / "run"), "--backbone", "scratch", "--image-size", "32",
                 "--epochs", "1", "--val-ratio", "0.34", "--cache-dir", str(tmp_path / "cache"), "-q"])
    err = capsys.readouterr().err
    if refused:
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert f"blue ({readable} of {readable + garbage} files)" in err and "fewer than 5 readable" in err
        assert not (tmp_path / "run" / "model.keras").exists()
    else:
        assert code == 0


def test_a_cached_classifier_conversion_runs_without_loading_the_keras_model(two_runs, tmp_path, monkeypatch):
    """`predict --runtime onnx` loads model.keras only to convert it; a cached conversion skips that load."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    import detcrop.classify.bundle as bundle_module
    from detcrop.classify.onnx_runtime import load_onnx_bundle
    from detcrop.data.images import load_image_array

    dataset, run, _ = two_runs
    cache = tmp_path / "onnx"
    images = [load_image_array(path) for path in sorted((dataset / "red").iterdir())]
    loads = []
    original = bundle_module.load_bundle
    monkeypatch.setattr(bundle_module, "load_bundle", lambda run_dir: loads.append(run_dir) or original(run_dir))
    first = load_onnx_bundle(run, cache_root=cache)
    assert loads == [run]  # converted: loaded once
    again = load_onnx_bundle(run, cache_root=cache)
    assert loads == [run]  # cached: not loaded again
    assert again.class_names == first.class_names and again.input_size == first.input_size
    np.testing.assert_allclose(again.predict(images), first.predict(images), atol=1e-6)

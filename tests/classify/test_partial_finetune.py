"""Partial fine-tuning on cached activations: the cut, the cache, and `train` end to end (scratch at 32 px)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("keras")

from detcrop.classify.bundle import load_bundle
from detcrop.classify.strategies.partial import (ActivationCache, PartialSettings, pooled_features, refit,
                                                restore_weights, split_at, trained_weights)
from detcrop.classify.training import train
from detcrop.data.config import ConfigError
from detcrop.data.images import load_image_array

from test_classify_training import make_dataset, quick_config


def test_split_at_composes_back_to_the_base():
    import keras

    from detcrop.classify.backbones import build_base

    base, _ = build_base("scratch", 32, None, seed=0)
    lower, upper, cut = split_at(base, "conv2")
    assert cut == "conv2" and tuple(lower.output.shape[1:]) == (8, 8, 32)
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(upper(lower(images, training=False), training=False)),
                               np.asarray(base(images, training=False)), atol=1e-6)
    assert all(layer in base.layers for layer in upper.layers[1:])  # the base's own layers, trained in place
    with pytest.raises(ConfigError, match="no layer starts with 'block9'"):
        split_at(base, "block9")
    del keras


def test_lite0_cut_at_block6a_is_exact():
    from detcrop.classify.backbones.efficientnet_lite import build_efficientnet_lite0

    base = build_efficientnet_lite0((64, 64, 3), weights=None)
    lower, upper, cut = split_at(base, "block6a")
    assert cut == "block6a_expand_conv" and tuple(lower.output.shape[1:]) == (4, 4, 112)
    images = np.random.default_rng(1).uniform(-1, 1, size=(2, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(upper(lower(images, training=False), training=False)),
                               np.asarray(base(images, training=False)), atol=1e-5)


def test_pooled_features_are_the_frozen_base_pooled_for_every_view():
    from detcrop.classify.backbones import build_base

    base, _ = build_base("scratch", 32, None, seed=0)
    lower, upper, _ = split_at(base, "conv2")
    images = np.random.default_rng(2).normal(size=(5, 32, 32, 3)).astype(np.float32)
    maps = {"orig": np.asarray(lower(images, training=False)),
            "flip": np.asarray(lower(images[:, :, ::-1], training=False))}
    features = pooled_features(upper, maps, batch_size=2)  # batches of 2, 2 and 1
    assert set(features) == {"orig", "flip"}
    for view, pixels in (("orig", images), ("flip", images[:, :, ::-1])):
        expected = np.asarray(base(pixels, training=False)).mean(axis=(1, 2))
        assert features[view].dtype == np.float32
        np.testing.assert_allclose(features[view], expected, atol=1e-5)
    empty = pooled_features(upper, {"orig": maps["orig"][:0]})["orig"]
    assert empty.shape == (0, features["orig"].shape[1])


def test_activation_cache_is_keyed_by_cut_and_stores_float16(tmp_path):
    first = ActivationCache(tmp_path, "scratch", 32, "random-init:seed=0", "conv2")
    other = ActivationCache(tmp_path, "scratch", 32, "random-init:seed=0", "conv1")
    assert first.folder != other.folder
    first.put("ab" * 32, "flip", np.ones((2, 2, 3), np.float32))
    assert first.get("ab" * 32, "flip").dtype == np.float16 and first.get("ab" * 32) is None
    assert other.get("ab" * 32, "flip") is None


@pytest.fixture(scope="module")
def partial_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("partial")
    dataset = make_dataset(tmp_path / "data", per_class=10)
    # refit off (the default): the bundle is the validated model (test_refit_* covers refit).
    config = quick_config(tmp_path, train_from="conv2", partial_epochs=3, epochs=2, refit=False)
    return tmp_path, dataset, train(dataset, tmp_path / "run", config, progress=False)


def test_train_with_partial_fine_tuning_writes_a_consistent_bundle(partial_run):
    tmp_path, dataset, result = partial_run
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["phase"].count("partial") == 3 and history["phase"][0] == "head"
    assert {"features", "partial_train"} <= set(result.timings)
    assert result.metrics["feature_cache"]["folder"].split("/")[-1].startswith("scratch-32px-conv2-")
    folder = next((tmp_path / "cache" / "activations").glob("scratch-32px-conv2-*"))
    assert len(list(folder.glob("*.flip.npy"))) == 30  # every image's mirror, once
    # Whatever phase won, the saved model reproduces the reported val accuracy from raw pixels.
    bundle = load_bundle(tmp_path / "run")
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    images = [load_image_array(path) for path in split["val"]]
    labels = np.array([bundle.class_names.index(path.split("/")[-2]) for path in split["val"]])
    probabilities = bundle.predict(images)
    assert float((probabilities.argmax(1) == labels).mean()) == pytest.approx(result.metrics["accuracy"])


def test_partial_fine_tuning_changes_the_base_only_when_it_wins(tmp_path):
    """Colour squares are easy: when the frozen head is already perfect, the base must stay as it was."""
    from detcrop.classify.backbones import build_base

    dataset = make_dataset(tmp_path / "data", per_class=10)
    config = quick_config(tmp_path, train_from="conv2", partial_epochs=2, epochs=30, patience=30)
    result = train(dataset, tmp_path / "run", config, progress=False)
    model = load_bundle(tmp_path / "run").model
    saved = next(layer for layer in model.layers if layer.name == "scratch").get_layer("conv2").get_weights()[0]
    fresh = build_base("scratch", 32, None, seed=0)[0].get_layer("conv2").get_weights()[0]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    # With partial fine-tuning after it, the head ran partial_head_epochs (20), not epochs (30; no early stop).
    assert history["phase"].count("head") == 20
    head_best = max(acc for acc, phase in zip(history["val_accuracy"], history["phase"]) if phase == "head")
    partial_best = max(acc for acc, phase in zip(history["val_accuracy"], history["phase"]) if phase == "partial")
    if partial_best > head_best:
        assert not np.allclose(saved, fresh)
    else:
        np.testing.assert_array_equal(saved, fresh)
    assert result.metrics["accuracy"] >= head_best - 1e-9 or partial_best > head_best


@pytest.mark.parametrize("overrides, message", [
    ({"fine_tune": "some"}, "fine_tune must be one of none, partial, full"),
    ({"fine_tune": "partial", "train_from": ""}, "train_from must name a block"),
    ({"partial_epochs": 0}, "partial_epochs"),
    ({"partial_shift": -1}, "partial_shift"),
])
def test_bad_partial_settings_are_refused(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        quick_config(tmp_path, **overrides)


def test_stacked_views_put_view_v_of_row_i_at_v_times_rows_plus_i():
    from detcrop.classify.strategies.partial import _stacked_views

    maps = {"orig": np.arange(10, dtype=np.float16).reshape(5, 1, 1, 2),
            "flip": -np.arange(10, dtype=np.float16).reshape(5, 1, 1, 2)}
    rows = np.array([3, 0, 4])
    stacked = _stacked_views(maps, rows)
    assert stacked.dtype == np.float16 and stacked.shape == (6, 1, 1, 2)
    np.testing.assert_array_equal(stacked, np.concatenate([maps["orig"][rows], maps["flip"][rows]]))


def test_training_stream_repeats_and_each_epoch_is_one_pass_over_the_rows():
    from detcrop.classify.strategies.partial import _train_dataset

    # Example i's maps are all i (both views), so a batch names the examples it holds; no shift, so values stay.
    count, batch_size = 11, 4
    views = np.concatenate([np.arange(count, dtype=np.float16)] * 2)[:, None, None, None] * np.ones((1, 2, 2, 3), np.float16)
    settings = PartialSettings(train_from="conv2", shift=0, batch_size=batch_size)
    data = _train_dataset(views, np.arange(count) % 3, 3, settings, None)
    steps = -(-count // batch_size)
    batches = iter(data)
    epochs = [np.concatenate([np.asarray(next(batches)[0])[:, 0, 0, 0] for _ in range(steps)]) for _ in range(3)]
    for seen in epochs:  # `steps_per_epoch=steps` batches are every example exactly once
        assert sorted(seen.astype(int).tolist()) == list(range(count))
    assert any(not np.array_equal(epochs[0], other) for other in epochs[1:])  # reshuffled on each pass


def test_every_stream_fit_reads_runs_without_tf_data_autotuning():
    # With autotuning on, ending a fit often waited with both cores idle (RESULTS.md#autotune-stall).
    from detcrop.classify.baseline.training import _dataset
    from detcrop.classify.strategies.partial import _train_dataset
    from detcrop.classify.fitting import epoch_batches, in_order_batches

    views = np.zeros((8, 2, 2, 3), np.float16)
    streams = {
        "baseline": _dataset(np.zeros((4, 3, 3, 1), np.uint8), np.arange(4) % 2, 2, 0),
        "partial fine-tuning": _train_dataset(views, np.arange(4) % 2, 2, PartialSettings(train_from="conv2"), None),
        "head": epoch_batches(np.zeros((4, 5), np.float32), np.eye(2, dtype=np.float32)[[0, 1, 0, 1]], 2, 0, 3)[0],
        "fine-tuning val": in_order_batches(np.zeros((4, 5), np.float32), np.zeros((4, 2), np.float32), 2),
    }
    for name, stream in streams.items():
        assert stream.options().autotune.enabled is False, name


def test_refit_starts_from_the_given_weights_and_trains_on_the_given_rows():
    import keras

    from detcrop.classify.backbones import build_base
    from detcrop.classify.model import build_head

    base, _ = build_base("scratch", 32, None, seed=0)
    upper = split_at(base, "conv2")[1]
    head = build_head(int(upper.output.shape[-1]), 3, 0.0, 0)
    start = trained_weights(upper, head)
    restore_weights(upper, head, ([[value + 1.0 for value in weights] for weights in start[0]],
                                  [value + 1.0 for value in start[1]]))  # as if fine-tuned since
    rng = np.random.default_rng(0)
    maps = {view: rng.normal(size=(20, 8, 8, 32)).astype(np.float16) for view in ("orig", "flip")}
    labels, rows = np.arange(20) % 3, np.arange(0, 20, 2)  # 10 of the 20 rows

    class Batches(keras.callbacks.Callback):
        count = 0

        def on_train_batch_end(self, batch, logs=None):
            Batches.count += 1

    from detcrop.classify.fitting import EpochLog

    history: dict[str, list] = {}
    settings = PartialSettings(train_from="conv2", epochs=2, learning_rate=1e-12, batch_size=4)
    seconds = refit(upper, head, settings, maps, labels, rows, 3, start,
                    callbacks=[EpochLog(history, None, "refit").callback(), Batches()])
    assert seconds > 0 and Batches.count == 2 * 3  # 2 epochs of ceil(10 / 4) batches: only `rows` train
    assert history["phase"] == ["refit", "refit"] and history["val_accuracy"] == [None, None]
    for now, then in zip(trained_weights(upper, head)[0] + [trained_weights(upper, head)[1]],
                         start[0] + [start[1]]):  # restored to `start` (a learning rate of 1e-12 moves nothing)
        for value, expected in zip(now, then):
            np.testing.assert_allclose(value, expected, atol=1e-6)


def _refit_run(tmp_path, monkeypatch, frozen_accuracy: float, callbacks=()):
    """A scratch run with refit on; the frozen head's val accuracy is forced (-1: fine-tuning always wins)."""
    from detcrop.classify.strategies import partial

    seen_rows = []
    real_refit = partial.refit

    def recording_refit(upper, head, settings, maps, labels, rows, *args, **kwargs):
        seen_rows.append(np.asarray(rows))
        return real_refit(upper, head, settings, maps, labels, rows, *args, **kwargs)

    monkeypatch.setattr(partial, "refit", recording_refit)
    monkeypatch.setattr(partial, "head_val_accuracy", lambda *args: frozen_accuracy)
    dataset = make_dataset(tmp_path / "data", per_class=10)
    config = quick_config(tmp_path, train_from="conv2", partial_epochs=2, epochs=1, refit=True)
    return train(dataset, tmp_path / "run", config, progress=False, callbacks=callbacks), seen_rows


def test_refit_trains_the_bundle_on_train_and_val_after_the_val_figures(tmp_path, monkeypatch):
    result, seen_rows = _refit_run(tmp_path, monkeypatch, -1.0)
    run = tmp_path / "run"
    history = json.loads((run / "history.json").read_text())
    split = json.loads((run / "split.json").read_text())
    assert result.metrics["refit"] == ["scratch"] and "refit" in result.timings
    assert json.loads((run / "metrics.json").read_text())["refit"] == ["scratch"]
    assert load_bundle(run).metadata.metrics["refit"] == ["scratch"]
    assert history["phase"].count("partial") == 2 and history["phase"].count("refit") == 2
    assert (run / "logs" / "refit").is_dir()
    # One refit, on every train and val row (each once), after the val figures came from the validated run.
    rows = seen_rows[0].tolist()
    assert len(seen_rows) == 1 and len(set(rows)) == len(rows) == len(split["train"]) + len(split["val"])
    assert result.metrics["val_images"] == len(split["val"])


def test_refit_is_skipped_when_fine_tuning_did_not_win(tmp_path, monkeypatch):
    result, seen_rows = _refit_run(tmp_path, monkeypatch, 2.0)  # no val accuracy beats 2: the frozen head stays
    assert seen_rows == [] and result.metrics["refit"] == [] and "refit" not in result.timings
    assert "refit" not in load_bundle(tmp_path / "run").metadata.metrics


def test_a_callback_can_cancel_during_refit(tmp_path, monkeypatch):
    import keras

    from detcrop.classify.training import TrainingCancelled

    class StopInRefit(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if "val_loss" not in (logs or {}):  # refit epochs have no val figures
                self.model.stop_training = True

    with pytest.raises(TrainingCancelled) as raised:
        _refit_run(tmp_path, monkeypatch, -1.0, callbacks=[StopInRefit()])
    assert raised.value.phase == "refit" and raised.value.epoch == 0
    assert not (tmp_path / "run" / "model.keras").exists()


def test_batchnorm_stays_frozen_while_the_blocks_above_the_cut_train():
    import keras

    from detcrop.classify.backbones.efficientnet_lite import build_efficientnet_lite0
    from detcrop.classify.model import build_head

    upper = split_at(build_efficientnet_lite0((64, 64, 3), weights=None), "block6a")[1]
    head = build_head(int(upper.output.shape[-1]), 3, 0.0, 0)
    norms = [layer for layer in upper.layers if isinstance(layer, keras.layers.BatchNormalization)]
    convs = [layer for layer in upper.layers if isinstance(layer, keras.layers.Conv2D)]
    before = {layer.name: [np.array(value) for value in layer.get_weights()] for layer in norms + convs}
    rng = np.random.default_rng(0)
    maps = {view: rng.normal(size=(8, 4, 4, 112)).astype(np.float16) for view in ("orig", "flip")}
    settings = PartialSettings(train_from="block6a", epochs=1, learning_rate=1e-2, batch_size=4)
    refit(upper, head, settings, maps, np.arange(8) % 3, np.arange(8), 3, trained_weights(upper, head))
    for layer in norms:  # scale, offset, moving mean, moving variance: none moves
        for now, then in zip(layer.get_weights(), before[layer.name]):
            np.testing.assert_array_equal(now, then)
    assert all(not np.array_equal(layer.get_weights()[0], before[layer.name][0]) for layer in convs)

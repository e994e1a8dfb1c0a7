"""The training loop end to end on a tiny generated dataset with the `scratch` backbone at 32 px."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("keras")

from detcrop.classify.bundle import BUNDLE_NAME, MODEL_NAME, load_bundle
from detcrop.classify.training import HISTORY_NAME, make_train_config, train
from detcrop.data.config import ConfigError
from detcrop.data.images import load_image_array

COLOURS = {"blue": (30, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40)}


def make_dataset(root, per_class: int = 8, size: int = 40, broken: bool = False):
    """Three classes of noisy colour squares; each class has its own colour."""
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (size, size + index, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{index}.png")
    if broken:
        (root / "red" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def quick_config(tmp_path, **overrides):
    values = {"backbone": "scratch", "input_size": 32, "epochs": 4, "batch_size": 8, "val_ratio": 0.25,
              "cache_dir": str(tmp_path / "cache"), "patience": 4}
    return make_train_config(values | overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("train")
    dataset = make_dataset(tmp_path / "data", broken=True)
    result = train(dataset, tmp_path / "run", quick_config(tmp_path), progress=False)
    return tmp_path, dataset, result


def test_train_writes_bundle_reports_and_history(trained):
    tmp_path, dataset, result = trained
    run = tmp_path / "run"
    for name in (MODEL_NAME, BUNDLE_NAME, "metrics.json", "classification_report.txt", "confusion_matrix.png",
                 "curves.png", "mistakes.png", HISTORY_NAME, "config.json", "split.json"):
        assert (run / name).stat().st_size > 0, name
    history = json.loads((run / HISTORY_NAME).read_text())
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr"} <= set(history)
    assert 1 <= len(history["loss"]) <= 4
    metadata = json.loads((run / BUNDLE_NAME).read_text())
    assert metadata["class_names"] == ["blue", "green", "red"]
    assert metadata["backbone"] == "scratch" and metadata["input_size"] == 32
    assert metadata["weights_source"] == "random-init:seed=0"
    assert metadata["config"]["epochs"] == 4
    assert [item["path"] for item in result.metrics["skipped"]] == [str(dataset / "red" / "broken.jpg")]
    assert result.metrics["train_images"] + result.metrics["val_images"] == 24


def test_bundle_predictions_match_training_metrics(trained):
    tmp_path, dataset, result = trained
    bundle = load_bundle(tmp_path / "run")
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    images = [load_image_array(path) for path in split["val"]]
    probabilities = bundle.predict(images)
    labels = np.array([bundle.class_names.index(path.split("/")[-2]) for path in split["val"]])
    # The head trained on cached features; the composed model must give the same answers.
    assert float((probabilities.argmax(1) == labels).mean()) == pytest.approx(result.metrics["accuracy"])
    # Loading twice gives the very same numbers.
    np.testing.assert_array_equal(probabilities, load_bundle(tmp_path / "run").predict(images))


def test_second_run_reuses_cached_features(trained, tmp_path):
    first_tmp, dataset, first = trained
    assert first.metrics["feature_cache"]["computed"] == 24
    config = quick_config(first_tmp, epochs=1)
    again = train(dataset, tmp_path / "run2", config, progress=False)
    assert again.metrics["feature_cache"] == first.metrics["feature_cache"] | {"computed": 0, "cached": 24}
    # A different input size never reuses those features.
    other = train(dataset, tmp_path / "run3", quick_config(first_tmp, epochs=1, input_size=40), progress=False)
    assert other.metrics["feature_cache"]["computed"] == 24
    assert other.metrics["feature_cache"]["folder"] != first.metrics["feature_cache"]["folder"]


def test_scratch_learns_colours(tmp_path):
    dataset = make_dataset(tmp_path / "data", per_class=12)
    result = train(dataset, tmp_path / "run", quick_config(tmp_path, epochs=40, learning_rate=0.02, dropout=0.0),
                   progress=False)
    assert result.metrics["accuracy"] >= 0.8


def test_fine_tune_phase_runs_and_cleans_its_backup(tmp_path):
    import keras

    seen = []

    class BatchNormStatistics(keras.callbacks.Callback):
        """Each fine-tune epoch's BatchNorm moving statistics in the base (scratch's start at 0 and 1)."""

        def on_epoch_end(self, epoch, logs=None):
            if self.model.name == "classifier":  # the composed model: fine-tuning, not the head on features
                seen.append([layer.get_weights()[2:] for layer in self.model.get_layer("scratch").layers
                             if isinstance(layer, keras.layers.BatchNormalization)])

    dataset = make_dataset(tmp_path / "data", per_class=6)
    config = quick_config(tmp_path, epochs=2, fine_tune="full", fine_tune_layers=3, fine_tune_epochs=2)
    result = train(dataset, tmp_path / "run", config, progress=False, callbacks=[BatchNormStatistics()])
    assert result.history["phase"].count("fine-tune") == 2
    assert len(seen) == 2 and all(len(norms) == 3 for norms in seen)
    for mean, variance in (statistics for norms in seen for statistics in norms):  # frozen: never moved
        np.testing.assert_array_equal(mean, 0.0)
        np.testing.assert_array_equal(variance, 1.0)
    assert not (tmp_path / "run" / "backup").exists()  # BackupAndRestore cleans up after a finished fit
    assert load_bundle(tmp_path / "run").predict([np.zeros((50, 60, 3), np.uint8)]).shape == (1, 3)


@pytest.mark.parametrize(
    "overrides, error",
    [
        ({"epoch": 3}, "did you mean 'epochs'"),
        ({"learning_rate": "fast"}, "expected a number"),
        ({"epochs": 0}, "epochs, batch_size"),
        ({"batch_size": 0}, "epochs, batch_size"),
        ({"dropout": 1.0}, "dropout"),
        ({"val_ratio": 0.0}, "val_ratio"),
        ({"input_size": 16}, "input_size"),
        ({"hidden_units": -1}, "hidden_units"),
        ({"learning_rate": 0}, "learning rates"),
    ],
)
def test_config_errors(overrides, error):
    with pytest.raises(ConfigError, match=error):
        make_train_config(overrides)


def test_train_refuses_a_single_class(tmp_path):
    make_dataset(tmp_path / "data")
    for name in ("green", "red"):
        for path in (tmp_path / "data" / name).iterdir():
            path.unlink()
        (tmp_path / "data" / name).rmdir()
    with pytest.raises(ValueError, match="at least 2 class folders"):
        train(tmp_path / "data", tmp_path / "run", quick_config(tmp_path), progress=False)


def test_fine_tuning_killed_after_epoch_3_of_4_resumes_as_if_never_stopped(tmp_path, monkeypatch):
    """Issue 10 row 4: the resumed run keeps the best weights and the history, and equals the uninterrupted run."""
    import detcrop.classify.strategies.full as full

    dataset = make_dataset(tmp_path / "data", per_class=6)
    config = quick_config(tmp_path, epochs=2, fine_tune="full", fine_tune_layers=3, fine_tune_epochs=4, fine_tune_learning_rate=3e-3)
    whole = train(dataset, tmp_path / "whole", config, progress=False)

    original_save = full.FineTuneBackup.save

    def save_then_die(self, epoch, *args, **kwargs):
        original_save(self, epoch, *args, **kwargs)
        if epoch == 2:
            raise KeyboardInterrupt  # as if the process were killed once epoch 3's state is on disk

    monkeypatch.setattr(full.FineTuneBackup, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(dataset, tmp_path / "killed", config, progress=False)
    assert (tmp_path / "killed" / "backup" / full.BACKUP_STATE_NAME).is_file()
    monkeypatch.setattr(full.FineTuneBackup, "save", original_save)
    follower = _follower()
    resumed = train(dataset, tmp_path / "killed", config, progress=False, callbacks=[follower])

    assert [epoch for phase, epoch, _ in follower.seen if phase == "fine-tune"] == [3]  # only epoch 4 ran again
    assert resumed.history["phase"] == whole.history["phase"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert resumed.history[key] == pytest.approx(whole.history[key], rel=1e-5), key
    assert resumed.metrics["accuracy"] == whole.metrics["accuracy"]
    assert not (tmp_path / "killed" / "backup").exists()
    images = [np.full((40, 44, 3), colour, np.uint8) for colour in COLOURS.values()]
    np.testing.assert_allclose(load_bundle(tmp_path / "killed").predict(images),
                               load_bundle(tmp_path / "whole").predict(images), rtol=1e-5, atol=1e-6)


def test_a_backup_of_other_settings_is_not_resumed(tmp_path, monkeypatch, caplog):
    import detcrop.classify.strategies.full as full

    dataset = make_dataset(tmp_path / "data", per_class=6)
    config = quick_config(tmp_path, epochs=1, fine_tune="full", fine_tune_layers=3, fine_tune_epochs=2)
    original_save = full.FineTuneBackup.save

    def save_then_die(self, epoch, *args, **kwargs):
        original_save(self, epoch, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(full.FineTuneBackup, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(dataset, tmp_path / "run", config, progress=False)
    monkeypatch.setattr(full.FineTuneBackup, "save", original_save)
    other = quick_config(tmp_path, epochs=1, fine_tune="full", fine_tune_layers=3, fine_tune_epochs=2, fine_tune_learning_rate=5e-4)
    result = train(dataset, tmp_path / "run", other, progress=False)
    assert "another split; starting phase 2 afresh" in caplog.text
    assert result.history["phase"].count("fine-tune") == 2


def test_fine_tuning_that_does_not_help_keeps_phase_one(tmp_path, caplog):
    dataset = make_dataset(tmp_path / "data", per_class=6)
    head_only = train(dataset, tmp_path / "head", quick_config(tmp_path, epochs=3), progress=False)
    # A learning rate this large wrecks the base: no fine-tune epoch may replace phase 1.
    wrecked = train(dataset, tmp_path / "wrecked", quick_config(
        tmp_path, epochs=3, fine_tune="full", fine_tune_layers=6, fine_tune_epochs=1, fine_tune_learning_rate=1e4), progress=False)
    assert "keeping the phase-1 weights" in caplog.text
    assert wrecked.metrics["accuracy"] == pytest.approx(head_only.metrics["accuracy"])
    assert not list((tmp_path / "wrecked").glob("*.weights.h5"))


def test_bundle_carries_the_unknown_threshold_of_its_val_predictions(trained):
    from detcrop.classify.calibration import choose_unknown_threshold

    tmp_path, dataset, result = trained
    bundle = load_bundle(tmp_path / "run")
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    probabilities = bundle.predict([load_image_array(path) for path in split["val"]])
    labels = np.array([bundle.class_names.index(path.split("/")[-2]) for path in split["val"]])
    threshold = bundle.metadata.unknown_threshold
    assert 1 / 3 <= threshold <= 1
    assert threshold == pytest.approx(choose_unknown_threshold(probabilities, labels), abs=1e-3)


@pytest.mark.parametrize("epochs, chosen", [
    ([(0.5, 1.0), (0.9, 0.8), (0.9, 0.3), (0.9, 0.5), (0.8, 0.1)], 2),  # equal accuracy: lower loss wins
    ([(0.5, 1.0), (0.6, 0.9), (0.7, 1.5)], 2),  # accuracy first, whatever the loss
    ([(1.0, 0.9), (1.0, 0.2)], 1),  # the early, under-confident epoch is not kept
])
def test_best_head_is_best_accuracy_then_lowest_loss(epochs, chosen):
    import keras

    from detcrop.classify.fitting import BestWeights

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    best = BestWeights()
    callback = best.callback()
    callback.set_model(model)
    for epoch, (accuracy, loss) in enumerate(epochs):
        model.set_weights([np.full((2, 1), epoch, np.float32), np.zeros(1, np.float32)])
        callback.on_epoch_end(epoch, {"val_accuracy": accuracy, "val_loss": loss})
    assert best.epoch == chosen and best.weights[0][0, 0] == chosen


def test_an_unreadable_file_is_skipped_not_fatal(tmp_path):
    dataset = make_dataset(tmp_path / "data", per_class=6)
    (dataset / "red" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    result = train(dataset, tmp_path / "run", quick_config(tmp_path, epochs=1), progress=False)
    assert [item["path"] for item in result.metrics["skipped"]] == [str(dataset / "red" / "dangling.png")]


def test_evaluate_in_small_batches_matches_one_batch(trained):
    from detcrop.classify.evaluation import evaluate

    tmp_path, dataset, result = trained
    small = evaluate(tmp_path / "run", dataset, batch_size=5, progress=False, prefix="small_")
    whole = evaluate(tmp_path / "run", dataset, batch_size=64, progress=False, prefix="whole_")
    assert small.metrics["samples"] == whole.metrics["samples"] == 24
    assert small.metrics["confusion_matrix"] == whole.metrics["confusion_matrix"]
    assert small.metrics["macro_f1"] == pytest.approx(whole.metrics["macro_f1"])


def _follower(cancel_in: str | None = None, cancel_after: int = 0):
    """A caller's callback: records (phase, epoch, logs) and cancels after `cancel_after` epochs of a phase."""
    import keras

    class Follow(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seen = []

        def on_epoch_end(self, epoch, logs=None):
            phase = "head" if self.model.name == "head" else "fine-tune"
            self.seen.append((phase, epoch, dict(logs or {})))
            if phase == cancel_in and epoch + 1 >= cancel_after:
                self.model.stop_training = True

    return Follow()


def test_callbacks_follow_both_phases(tmp_path):
    dataset = make_dataset(tmp_path / "data", per_class=6)
    follower = _follower()
    result = train(dataset, tmp_path / "run", quick_config(tmp_path, epochs=2, fine_tune="full", fine_tune_layers=3, fine_tune_epochs=2),
                   progress=False, callbacks=[follower])
    assert [(phase, epoch) for phase, epoch, _ in follower.seen] == [
        ("head", 0), ("head", 1), ("fine-tune", 0), ("fine-tune", 1)]
    for _, _, logs in follower.seen:
        assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(logs)
    assert [logs["val_accuracy"] for _, _, logs in follower.seen] == pytest.approx(result.history["val_accuracy"])


@pytest.mark.parametrize("phase", ["head", "fine-tune"])
def test_a_callback_cancels_training(tmp_path, phase):
    from detcrop.classify.training import TrainingCancelled
    from detcrop.data.errors import DetcropError

    dataset = make_dataset(tmp_path / "data", per_class=6)
    follower = _follower(cancel_in=phase, cancel_after=1)
    config = quick_config(tmp_path, epochs=3, fine_tune="full", fine_tune_layers=3, fine_tune_epochs=3)
    with pytest.raises(TrainingCancelled, match=f"cancelled by a callback in the {phase} phase after epoch 1") as error:
        train(dataset, tmp_path / "run", config, progress=False, callbacks=[follower])
    assert isinstance(error.value, DetcropError) and error.value.phase == phase
    assert [seen[0] for seen in follower.seen].count(phase) == 1  # stopped right after the cancel
    assert not (tmp_path / "run" / BUNDLE_NAME).exists()
    assert not list((tmp_path / "run").glob("*.weights.h5"))


def test_training_seeds_no_global_generator(tmp_path):
    """Library code never seeds Python's or NumPy's global generators behind its caller; runs still repeat."""
    import random

    dataset = make_dataset(tmp_path / "data", per_class=5)
    random.seed(123)
    np.random.seed(123)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    first = train(dataset, tmp_path / "one", quick_config(tmp_path, epochs=2), progress=False)
    assert random.getstate() == python_state
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1]) and after[2:] == numpy_state[2:]
    random.seed(999)  # another caller state: the same seed in the config still gives the same run
    second = train(dataset, tmp_path / "two", quick_config(tmp_path, epochs=2), progress=False)
    assert second.history["loss"] == first.history["loss"]


def test_an_undecodable_image_is_remembered_and_not_passed_again(tmp_path):
    """A rerun reports the file without starting a feature pass for it (with Ray: no Ray start-up)."""
    import json

    from detcrop.classify.features import FeatureCache, LocalFeaturePass, build_feature_model, extract_features
    from detcrop.data.images import file_sha256

    dataset = make_dataset(tmp_path / "data", per_class=2, broken=True)
    paths = sorted(dataset.rglob("*.*"))
    sha256s = [file_sha256(path) for path in paths]
    model, source, _, _ = build_feature_model("scratch", 32)
    cache = FeatureCache(tmp_path / "cache", "scratch", 32, source)
    passed: list[list[str]] = []

    def feature_pass(batch, variants):
        passed.append([str(path) for path in batch])
        return LocalFeaturePass(model, 32)(batch, variants)

    broken = str(dataset / "red" / "broken.jpg")
    first = extract_features(paths, sha256s, model, cache, 32, progress=False, feature_pass=feature_pass)
    assert [path for path, _ in first.skipped] == [broken] and broken in passed[0]
    again = extract_features(paths, sha256s, model, cache, 32, progress=False, feature_pass=feature_pass)
    assert again.skipped == first.skipped and len(passed) == 1  # no second pass at all
    assert again.kept == first.kept and again.cached == len(paths) - 1
    # A marker written by another version of detcrop (which may read the file) is not trusted.
    marker = next(cache.folder.glob("*.unreadable.json"))
    marker.write_text(json.dumps(json.loads(marker.read_text()) | {"detcrop": "0.0.0-other"}))
    extract_features(paths, sha256s, model, cache, 32, progress=False, feature_pass=feature_pass)
    assert passed[-1] == [broken]


def test_a_file_that_changed_since_it_was_hashed_is_not_marked_unreadable(tmp_path):
    from detcrop.classify.features import FeatureCache, build_feature_model, extract_features
    from detcrop.data.images import file_sha256

    dataset = make_dataset(tmp_path / "data", per_class=1, broken=True)
    paths = sorted(dataset.rglob("*.*"))
    sha256s = [file_sha256(path) for path in paths]
    broken = paths.index(dataset / "red" / "broken.jpg")
    sha256s[broken] = "0" * 64  # the bytes hashed before are not the bytes there now
    model, source, _, _ = build_feature_model("scratch", 32)
    cache = FeatureCache(tmp_path / "cache", "scratch", 32, source)
    result = extract_features(paths, sha256s, model, cache, 32, progress=False)
    assert [path for path, _ in result.skipped] == [str(paths[broken])]
    assert not list(cache.folder.glob("*.unreadable.json")) and cache.unreadable("0" * 64) is None


def test_a_standardizing_head_gives_its_training_features_zero_mean_and_unit_spread():
    import keras

    from detcrop.classify.model import build_head

    features = np.random.default_rng(0).normal([0.0, 40.0, -3.0], [1.0, 25.0, 0.01], size=(200, 3)).astype(np.float32)
    head = build_head(3, 2, 0.0, 0, standardize=features)
    standardized = np.asarray(keras.Model(head.input, head.get_layer("head_standardize").output)(features))
    np.testing.assert_allclose(standardized.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(standardized.std(0), 1.0, atol=1e-3)
    assert "head_standardize" not in [layer.name for layer in build_head(3, 2, 0.0, 0).layers]

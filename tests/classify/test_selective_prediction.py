"""Selective prediction: the accuracy/coverage curve, a threshold for a target accuracy, and what train writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detcrop.classify.calibration import accuracy_coverage_curve, coverage_table, threshold_for_accuracy

# Top probabilities 0.9 (right), 0.8 (right), 0.7 (wrong), 0.6 (right), 0.5 (wrong).
PROBABILITIES = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6], [0.5, 0.5]])
LABELS = np.array([0, 1, 1, 1, 1])


def test_curve_answers_the_most_confident_first():
    thresholds, coverage, accuracy = accuracy_coverage_curve(PROBABILITIES, LABELS)
    np.testing.assert_allclose(thresholds, [0.9, 0.8, 0.7, 0.6, 0.5])
    np.testing.assert_allclose(coverage, [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(accuracy, [1.0, 1.0, 2 / 3, 0.75, 0.6])


@pytest.mark.parametrize("target, threshold, reached", [
    (1.0, 0.8, True),  # the lowest threshold that is still always right answers 40%
    (0.75, 0.6, True),  # 0.6 answers 80% at 0.75: lower than 0.7 although 0.7 alone misses
    (0.6, 0.5, True),  # everything
])
def test_threshold_for_accuracy_answers_as_much_as_the_target_allows(target, threshold, reached):
    assert threshold_for_accuracy(PROBABILITIES, LABELS, target) == (threshold, reached)


def test_unreachable_target_says_so():
    wrong = np.array([[0.9, 0.1], [0.8, 0.2]])
    assert threshold_for_accuracy(wrong, np.array([1, 1]), 0.9)[1] is False
    with pytest.raises(ValueError, match="target accuracy"):
        threshold_for_accuracy(PROBABILITIES, LABELS, 1.5)


def test_coverage_table_rows():
    rows = coverage_table(PROBABILITIES, LABELS, coverages=(1.0, 0.8, 0.4))
    assert rows == [{"coverage": 1.0, "threshold": 0.5, "accuracy": 0.6},
                    {"coverage": 0.8, "threshold": 0.6, "accuracy": 0.75},
                    {"coverage": 0.4, "threshold": 0.8, "accuracy": 1.0}]


def test_presets_and_their_overrides():
    from detcrop.classify.config import member_configs, resolve_ensemble, resolve_fine_tune, resolve_train_from
    from detcrop.data.config import ConfigError
    from detcrop.classify.training import make_train_config

    # The default: Lite0 + Lite2, both partially fine-tuned at their own cuts and refit.
    assert resolve_train_from(make_train_config()) == "block6b"
    assert resolve_ensemble(make_train_config()) == "efficientnet-lite2"
    assert [(item.backbone, resolve_train_from(item), item.refit, item.partial_head_epochs)
            for item in member_configs(make_train_config())] == [
        ("efficientnet-lite0", "block6b", True, 20), ("efficientnet-lite2", "block6c", True, 20)]
    fast = make_train_config(preset="fast")
    assert resolve_fine_tune(fast) == "none" and resolve_train_from(fast) == "" and resolve_ensemble(fast) == ""
    assert not fast.refit and fast.input_size == 320
    scratch = make_train_config({"backbone": "scratch"})  # no known cut: the head alone
    assert resolve_fine_tune(scratch) == "none" and resolve_train_from(scratch) == ""
    full = make_train_config({"fine_tune": "full"})  # full fine-tuning: one model, no cut
    assert resolve_train_from(full) == "" and resolve_ensemble(full) == "" and resolve_fine_tune(full) == "full"
    page = make_train_config(preset="page")
    assert (page.fine_tune, page.ensemble, page.flip_features, page.tta_flip) == ("none", "", False, False)
    assert make_train_config().partial_epochs == 12
    assert make_train_config({"input_size": 64}, preset="fast").input_size == 64  # flags win over the preset
    with pytest.raises(ConfigError, match="unknown preset 'fastest'"):
        make_train_config(preset="fastest")
    with pytest.raises(ConfigError, match="RESULTS.md#preset-best"):
        make_train_config(preset="best")


def test_train_writes_coverage_report_threshold_and_tensorboard_logs(tmp_path):
    from test_classify_training import make_dataset, quick_config

    from detcrop.classify.bundle import BUNDLE_NAME
    from detcrop.classify.training import train

    dataset = make_dataset(tmp_path / "data")
    result = train(dataset, tmp_path / "run", quick_config(tmp_path, target_accuracy=0.9), progress=False)
    run = tmp_path / "run"
    assert (run / "coverage.png").stat().st_size > 5000
    assert "unknown threshold stored in the bundle" in (run / "coverage.txt").read_text()
    metadata = json.loads((run / BUNDLE_NAME).read_text())
    assert "0.9" in result.metrics["unknown_threshold_rule"] and metadata["config"]["target_accuracy"] == 0.9
    assert metadata["unknown_threshold"] == result.metrics["unknown_threshold"]
    assert [row["coverage"] for row in result.metrics["coverage"]][0] == 1.0
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:  # a dependency; older venvs may lack it
        assert list((run / "logs" / "head").rglob("events.out.tfevents.*"))

"""The console: quiet by default (no third-party log lines), detail with -v, a closing summary per command."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from detcrop.classify.bundle import save_bundle
from detcrop.data.progress import show_status_lines, status_line
from detcrop.detect.crop import CropSummary
from detcrop.pipeline import console
from detcrop.pipeline.commands.demo import DemoPaths, format_demo_summary
from detcrop.pipeline.commands.predict import format_predict_summary
from detcrop.pipeline.scoring import ObjectResult, PhotoResult
from tiny_models import tiny_model

#: What must never reach a default console: tf2onnx, absl and TensorFlow's C++ lines, deprecations.
THIRD_PARTY_MARKS = ("tf2onnx", "absl", "I0000", "W0000", "E0000", "cuda", "deprecated", "oneDNN")


@pytest.fixture
def restored_logging():
    """Undo what `configure_console` does to this process's logging, warnings and import hooks."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    libraries = {name: logging.getLogger(name).level for name in console.THIRD_PARTY_LOGGERS}
    meta_path = list(sys.meta_path)
    with warnings.catch_warnings():
        yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, library_level in libraries.items():
        logging.getLogger(name).setLevel(library_level)
    sys.meta_path[:] = meta_path
    show_status_lines(True)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    save_bundle(run, tiny_model(), {"class_names": ["classic", "diver"], "input_size": 16, "backbone": "test",
                                    "weights_source": "random", "metrics": {}, "config": {}})
    return run


def _detcrop(*argv: str, cache: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TF_CPP", "PYTHONWARNINGS"))}
    env["XDG_CACHE_HOME"] = str(cache)
    return subprocess.run([sys.executable, "-m", "detcrop.pipeline.cli", *argv], capture_output=True, text=True,
                          env=env, timeout=600)


def test_an_onnx_conversion_is_quiet_by_default_and_detailed_with_v(run_dir, tmp_path):
    """A fresh process that imports TensorFlow and runs tf2onnx: nothing of theirs by default, all of it with -v."""
    quiet = _detcrop("export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "quiet"), cache=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    leaked = [line for line in quiet.stderr.splitlines() if any(mark in line for mark in THIRD_PARTY_MARKS)]
    assert leaked == []
    assert "INFO" not in quiet.stderr
    assert "wrote" in quiet.stdout

    verbose = _detcrop("export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "verbose"), "-v",
                       cache=tmp_path)
    assert verbose.returncode == 0, verbose.stderr
    assert "INFO detcrop.classify.export: converting" in verbose.stderr
    assert "tf2onnx" in verbose.stderr  # third-party logs come back with -v


def test_a_usage_error_stays_one_line_with_exit_2(tmp_path):
    result = _detcrop("predict", str(tmp_path / "no-run"), str(tmp_path), "--max-objects", "0", cache=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["detcrop predict: error: --max-objects must be >= 1, got 0"]


def test_native_stderr_lines_of_tensorflow_are_dropped_and_the_rest_kept(capfd):
    with console.native_stderr_filtered():
        for line in ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
                     "I0000 00:00:1796611652.595654    4897 cudart_stub.cc:31] Could not find cuda drivers\n",
                     "W0000 00:00:1796611652.595654    4897 port.cc:153] a notice\n",
                     "E0000 00:00:1796611669.147168    4897 cuda_platform.cc:52] a real error\n",
                     "a line of our own\n"):
            os.write(2, line.encode())
    assert capfd.readouterr().err.splitlines() == [
        "E0000 00:00:1796611669.147168    4897 cuda_platform.cc:52] a real error", "a line of our own"]


@pytest.mark.parametrize("verbosity, detcrop_info, library_warning", [
    (console.QUIET, False, False),
    (console.DEFAULT, False, False),
    (console.VERBOSE, True, True),
])
def test_verbosity_decides_which_log_lines_show(restored_logging, capsys, verbosity, detcrop_info, library_warning):
    console.configure_console(verbosity)
    logging.getLogger("detcrop.pipeline.test").info("detcrop info line")
    logging.getLogger("detcrop.pipeline.test").warning("detcrop warning line")
    logging.getLogger("tf2onnx.tfonnx").warning("library warning line")
    err = capsys.readouterr().err
    assert ("detcrop info line" in err) == detcrop_info
    assert "detcrop warning line" in err  # detcrop's warnings always show
    assert ("library warning line" in err) == library_warning


def test_library_deprecation_warnings_are_hidden_by_default(restored_logging):
    console.configure_console(console.DEFAULT)
    with warnings.catch_warnings(record=True) as caught:  # keeps the filters configure_console set
        warnings.warn_explicit("old api", DeprecationWarning, "tensorflow/x.py", 1, module="tensorflow.x")
        warnings.warn_explicit("library notice", UserWarning, "keras/x.py", 1, module="keras.x")
        warnings.warn_explicit("odd input", UserWarning, "detcrop/y.py", 1, module="detcrop.y")
    assert [str(warning.message) for warning in caught] == ["odd input"]


@pytest.mark.parametrize("seconds, shown", [(0.4, "0 s"), (59.6, "1 min 00 s"), (125, "2 min 05 s"),
                                            (3725, "1 h 02 min")])
def test_durations_read_as_a_person_says_them(seconds, shown):
    assert console.format_duration(seconds) == shown


def _photo(name: str, label: str | None, error: str | None = None) -> PhotoResult:
    objects = () if label is None else (ObjectResult(box=(0, 0, 10, 10), crop_box=(0, 0, 10, 10), detector_score=0.9,
                                                     probabilities={"classic": 0.9, "diver": 0.1}, label=label,
                                                     top_class=label, top_probability=0.9),)
    return PhotoResult(path=f"new-photos/{name}", objects=objects, error=error)


def test_the_demo_ends_with_what_was_made_where_and_how_long():
    out = Path("demo-out")
    paths = DemoPaths(out / "photos", out / "new-photos", out / "dataset", out / "run", out / "predictions")
    crop_summary = CropSummary(dataset=str(out / "dataset"), photos_seen=60, cropped=53, empty=7, failed=0,
                               crops=53, crops_per_label={"classic": 27, "diver": 26})
    metrics = {"accuracy": 1.0, "macro_f1": 0.9876, "samples": 11}
    results = [_photo("classic_1000_000.jpg", "classic"), _photo("diver_1000_000.jpg", "classic"),
               _photo("diver_1000_001.jpg", None), _photo("diver_1000_002.jpg", None, error="truncated")]
    lines = format_demo_summary(paths, 60, crop_summary, metrics, results, seconds=265).splitlines()
    assert lines[0] == "demo done in 4 min 25 s"
    assert len(lines) <= 8
    text = "\n".join(lines)
    assert "demo-out/dataset/: 60 photos: 53 cropped, 7 empty, 0 failed; 53 crops (classic: 27, diver: 26)" in text
    assert "demo-out/run/: val accuracy 1.000, macro F1 0.988 (11 val images)" in text
    assert "demo-out/predictions/: 4 photos: 2 classified, 1 without an object, 1 unreadable" in text
    assert "1 of 4 new photos" in text


def test_predict_ends_with_its_run_figures_and_files():
    results = [_photo("a.jpg", "classic"), _photo("b.jpg", None), _photo("c.jpg", None, error="truncated")]
    from detcrop.pipeline.batch_predict import record_of, summarise

    counts = summarise(map(record_of, results), [])
    lines = format_predict_summary(counts, "runs/r1", 3.2, json_path="p.json", plot_dir="plots").splitlines()
    assert lines == ["predict done in 3 s",
                     "  run     runs/r1",
                     "  photos  3 photos: 1 classified, 1 without an object, 1 unreadable",
                     "  JSON    p.json",
                     "  plots   plots/ (one PNG per photo)"]


def test_a_status_line_is_left_with_its_time_and_quiet_mode_hides_it(restored_logging, capsys):
    with status_line("converting the detector to ONNX (once)"):
        pass
    assert capsys.readouterr().err.split("\r")[-1].strip() == "converting the detector to ONNX (once): 00:00"
    console.configure_console(console.QUIET)
    with status_line("converting the detector to ONNX (once)"):
        pass
    assert capsys.readouterr().err == ""

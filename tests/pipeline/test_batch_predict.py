"""`detcrop predict --out PRED_DIR`: the resumable batch job, its outputs, `Scorer.score_many` and the Ray engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detcrop.data.config import ConfigError
from detcrop.pipeline.batch_predict import PREDICT_SUMMARY, PREDICTIONS_JSONL, PREDICTIONS_PARQUET
from detcrop.pipeline.cli import main
from detcrop.pipeline.scoring import Scorer
from test_predict import SquareFinder, make_run, scene

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def crawl(tmp_path_factory):
    """40 generated photos (dark, light or no square) and one broken file, in two folders."""
    root = tmp_path_factory.mktemp("crawl")
    for index in range(40):
        folder = root / ("a" if index % 2 else "b")
        folder.mkdir(exist_ok=True)
        Image.fromarray(scene((0, 255, None)[index % 3], seed=index)).save(folder / f"p{index:03d}.png")
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root


@pytest.fixture()
def fake_detector(monkeypatch):
    import detcrop.detect.base

    monkeypatch.setattr(detcrop.detect.base, "load_detector", lambda name, **kwargs: SquareFinder())


def _predict(run_dir, crawl, out, *flags) -> int:
    return main(["predict", str(run_dir), str(crawl), "--out", str(out), "--runtime", "onnx", "-q", *flags])


def test_the_job_writes_records_parquet_and_summary(run_dir, crawl, tmp_path, fake_detector, capsys):
    import pyarrow.parquet as pq

    assert _predict(run_dir, crawl, tmp_path / "out") == 0
    records = [json.loads(line) for line in (tmp_path / "out" / PREDICTIONS_JSONL).read_text().splitlines()]
    assert [Path(record["path"]).name for record in records][:3] == ["p001.png", "p003.png", "p005.png"]
    assert len(records) == 41 and all("seconds" not in record for record in records)
    assert sum(record["error"] is not None for record in records) == 1
    table = pq.read_table(tmp_path / "out" / PREDICTIONS_PARQUET).to_pylist()
    # One row per object, one row with an empty object per photo without any.
    assert len(table) == sum(max(1, len(record["objects"])) for record in records)
    assert {"p_dark", "p_light", "x_min", "label", "sha256"} <= set(table[0])
    summary = json.loads((tmp_path / "out" / PREDICT_SUMMARY).read_text())
    assert summary["photos"] == 41 and summary["failed"] == 1 and summary["scored_this_run"] == 41
    assert summary["no_object"] + summary["unknown"] + sum(summary["per_class"].values()) == 40
    assert summary["per_class"]["dark"] >= 10 and summary["per_class"]["light"] >= 10
    out = capsys.readouterr().out
    assert "predictions.parquet" in out and "41 photos" in out


def test_a_killed_job_resumes_to_the_same_outputs(run_dir, crawl, tmp_path, fake_detector, monkeypatch):
    from detcrop.pipeline import batch_predict

    assert _predict(run_dir, crawl, tmp_path / "whole") == 0
    real_write = batch_predict.JsonLinesWriter.write_line
    calls = {"count": 0}

    def write_then_die(self, line):
        if calls["count"] == 17:
            self._handle.write(line[:25])  # half a line on disk, as a kill mid-write leaves it
            self._handle.flush()
            raise KeyboardInterrupt
        calls["count"] += 1
        real_write(self, line)

    monkeypatch.setattr(batch_predict.JsonLinesWriter, "write_line", write_then_die)
    assert _predict(run_dir, crawl, tmp_path / "killed") == 130
    assert len((tmp_path / "killed" / PREDICTIONS_JSONL).read_bytes().split(b"\n")) == 18  # 17 lines + the half one
    monkeypatch.setattr(batch_predict.JsonLinesWriter, "write_line", real_write)
    assert _predict(run_dir, crawl, tmp_path / "killed") == 0
    for name in (PREDICTIONS_JSONL, PREDICTIONS_PARQUET):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    summary = json.loads((tmp_path / "killed" / PREDICT_SUMMARY).read_text())
    assert summary["recorded_before"] == 17 and summary["scored_this_run"] == 24


@pytest.mark.parametrize("flags, setting", [
    (["--unknown-threshold", "0.9"], "unknown_threshold"),
    (["--max-objects", "2"], "max_objects"),
    (["--no-detect"], "detect"),
])
def test_other_settings_into_the_same_folder_are_refused_naming_the_setting(run_dir, crawl, tmp_path, fake_detector,
                                                                            capsys, flags, setting):
    assert _predict(run_dir, crawl, tmp_path / "out") == 0
    capsys.readouterr()
    assert _predict(run_dir, crawl, tmp_path / "out", *flags) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"made with {setting}=" in error and "choose another --out" in error


def test_another_run_or_a_foreign_folder_is_refused(run_dir, crawl, tmp_path, fake_detector, capsys):
    other_run = make_run(tmp_path / "other-run", on_empty="whole-photo")
    assert _predict(run_dir, crawl, tmp_path / "out") == 0
    assert _predict(other_run, crawl, tmp_path / "out") == 2
    assert "made with run=" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert _predict(run_dir, crawl, tmp_path / "mine") == 2
    assert "did not write (notes.txt)" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_second_job_on_a_locked_folder_exits_2(run_dir, crawl, tmp_path, fake_detector, capsys):
    from detcrop.data.locks import folder_lock

    with folder_lock(tmp_path / "out", "predict"):
        assert _predict(run_dir, crawl, tmp_path / "out") == 2
    assert "predict" in capsys.readouterr().err


def test_score_many_equals_one_photo_at_a_time_and_takes_bytes(run_dir, crawl, fake_detector):
    scorer = Scorer.load(run_dir, classifier_runtime="onnx")
    paths = sorted(crawl.rglob("*.png"))[:12]
    one_by_one = [scorer.score(path) for path in paths]
    for batch_size, parallel in ((1, 1), (5, 1), (12, 1), (1, 3), (5, 2)):
        scored = list(scorer.score_many(paths, batch_size=batch_size, parallel=parallel))
        assert [result.objects for result in scored] == [result.objects for result in one_by_one]
        assert [result.path for result in scored] == [str(path) for path in paths]  # input order, however many at once
    with pytest.raises(ConfigError, match="parallel must be >= 1"):
        next(scorer.score_many(paths, parallel=0))
    from_bytes = list(scorer.score_many([(str(path), path.read_bytes()) for path in paths], batch_size=4))
    assert [result.objects for result in from_bytes] == [result.objects for result in one_by_one]
    assert [result.path for result in from_bytes] == [str(path) for path in paths]
    skipped = list(scorer.score_many(paths, skip=lambda path, sha256: path.endswith("p003.png")))
    assert len(skipped) == 11 and not any(result.path.endswith("p003.png") for result in skipped)


def test_the_table_is_printed_for_small_inputs_or_when_asked(run_dir, crawl, tmp_path, fake_detector, capsys,
                                                              monkeypatch):
    from detcrop.pipeline.commands import predict

    monkeypatch.setattr(predict, "TABLE_PHOTOS", 10)
    assert _predict(run_dir, crawl, tmp_path / "out") == 0
    assert "photo  " not in capsys.readouterr().out
    assert _predict(run_dir, crawl, tmp_path / "out", "--table") == 0  # a finished job: everything was recorded
    assert "p001.png" not in capsys.readouterr().out  # nothing scored again, so no rows to show


def test_a_real_kill_9_and_a_rerun_give_the_same_outputs(run_dir, tmp_path, monkeypatch):
    """500 photos, scored whole (no detector, so the subprocess needs no fake), killed with SIGKILL midway."""
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    rng = np.random.default_rng(0)
    for index in range(500):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(crawl / f"{index:04d}.png")
    arguments = ["predict", str(run_dir), str(crawl), "--no-detect", "--runtime", "onnx", "--batch-size", "4", "-q"]
    command = [sys.executable, "-m", "detcrop.pipeline.cli", *arguments]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    environment = dict(os.environ)
    assert main([*arguments, "--out", str(tmp_path / "whole")]) == 0  # uninterrupted, in this process
    jsonl = tmp_path / "killed" / PREDICTIONS_JSONL
    process = subprocess.Popen([*command, "--out", str(tmp_path / "killed")], env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if jsonl.is_file() and jsonl.read_bytes().count(b"\n") >= 100:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert process.wait() == -signal.SIGKILL
    lines = jsonl.read_bytes().count(b"\n")
    assert 100 <= lines < 500
    subprocess.run([*command, "--out", str(tmp_path / "killed")], env=environment, check=True, capture_output=True)
    for name in (PREDICTIONS_JSONL, PREDICTIONS_PARQUET):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    summary = json.loads((tmp_path / "killed" / PREDICT_SUMMARY).read_text())
    assert summary["recorded_before"] == lines and summary["photos"] == 500


@pytest.mark.shared
def test_the_ray_engine_gives_the_local_engines_records(run_dir, shared_data, tmp_path):
    """40 real photos through the real SSD: the same records from Ray Data's actors as from the local engine."""
    pytest.importorskip("ray")
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted((shared_data / "caltech-watch" / "watch").iterdir())[:30] + \
            sorted((shared_data / "clock-scenes").iterdir())[:10]:
        (photos / path.name).symlink_to(path)
    base = ["predict", str(run_dir), str(photos), "--runtime", "onnx", "-q"]
    assert main([*base, "--out", str(tmp_path / "local")]) == 0
    assert main([*base, "--out", str(tmp_path / "ray"), "--engine", "ray", "--ray-workers", "2"]) == 0
    local, ray = ([json.loads(line) for line in (tmp_path / name / PREDICTIONS_JSONL).read_text().splitlines()]
                  for name in ("local", "ray"))
    assert len(local) == len(ray) == 40
    for mine, theirs in zip(local, ray):
        assert (mine["path"], mine["sha256"], mine["top_class"], mine["note"]) == \
            (theirs["path"], theirs["sha256"], theirs["top_class"], theirs["note"])
        assert len(mine["objects"]) == len(theirs["objects"])
        for first, second in zip(mine["objects"], theirs["objects"]):
            assert first["box"] == second["box"]
            for name, value in first["probabilities"].items():
                assert abs(value - second["probabilities"][name]) <= 1e-6
    assert sum(bool(record["objects"]) for record in local) >= 20  # the detector found watches
    # The local job scores batches at once on one-thread sessions: a speed setting, the same answers as all cores.
    from detcrop.data.folders import find_image_paths

    scorer = Scorer.load(run_dir, detector_runtime="onnx", classifier_runtime="onnx")
    for mine, result in zip(local, scorer.score_many(find_image_paths([photos])[0])):
        assert mine["path"] == result.path and len(mine["objects"]) == len(result.objects)
        for first, second in zip(mine["objects"], result.objects):
            assert first["box"] == list(second.box)
            for name, value in first["probabilities"].items():
                assert abs(value - second.probabilities[name]) <= 1e-6

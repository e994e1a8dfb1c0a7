"""`detcrop crop --engine ray`: the same dataset as the local engine, on a local Ray (2 workers)."""

from __future__ import annotations

import json
import os

import pytest

from detcrop.data.manifest import MANIFEST_NAME, read_manifest
from detcrop.pipeline.cli import main


def _files(dataset):
    """{relative path: bytes} of every crop and the manifest (not the lock, the config or the summary)."""
    return {path.relative_to(dataset).as_posix(): path.read_bytes() for path in sorted(dataset.rglob("*"))
            if path.is_file() and (path.suffix == ".jpg" or path.name == MANIFEST_NAME)}


@pytest.mark.shared
def test_ray_engine_writes_the_local_engines_dataset_and_resumes(shared_data, tmp_path, monkeypatch):
    pytest.importorskip("ray.data")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    photos = shared_data / "clock-scenes"
    common = ["--runtime", "onnx", "--on-empty", "whole-photo", "-q"]
    assert main(["crop", str(photos), "--out", str(tmp_path / "local"), *common]) == 0
    assert main(["crop", str(photos), "--out", str(tmp_path / "ray"), "--engine", "ray", "--ray-workers", "2",
                 *common]) == 0
    local, distributed = _files(tmp_path / "local"), _files(tmp_path / "ray")
    assert len(local) >= 29 and local.keys() == distributed.keys()
    assert [name for name in local if local[name] != distributed[name]] == []  # byte for byte, manifest too

    # A rerun from the same photos read through a pyarrow URI does no detection and adds nothing.
    before = read_manifest(tmp_path / "ray" / MANIFEST_NAME)
    assert main(["crop", f"file://{os.path.abspath(photos)}", "--out", str(tmp_path / "ray"), "--engine", "ray",
                 *common]) == 0
    assert read_manifest(tmp_path / "ray" / MANIFEST_NAME) == before
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert summary["skipped_done"] == 29 and summary["photos_seen"] == 29

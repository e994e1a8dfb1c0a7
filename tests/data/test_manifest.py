"""The crop manifest: validated records, crash-safe appends, atomic rewrites."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from detcrop.data.atomic import atomic_open, atomic_write_json
from detcrop.data.manifest import CropRecord, ManifestWriter, read_manifest, write_manifest


def _crop(index: int) -> CropRecord:
    return CropRecord(
        source_path=f"photos/rolex/p{index}.jpg", source_sha256=f"{index:064x}", status="cropped",
        label="rolex", path=f"rolex/p{index}_0.jpg", sha256="ab" * 32, box=(1.5, 2, 30, 40),
        crop_box=(0, 0, 32, 42), score=0.9, class_id=85, class_name="clock", detector="ssd-mobilenet-v2", index=0,
    )


@pytest.mark.parametrize("values, error", [
    ({"status": "cropped", "label": "a", "path": "a/x.jpg"}, None),
    ({"status": "empty", "reason": "no clock above 0.3"}, None),
    ({"status": "failed", "reason": "corrupt"}, None),
    ({"status": "done"}, "status must be"),
    ({"status": "cropped", "label": "a"}, "needs path and label"),
    ({"status": "empty"}, "needs a reason"),
    ({"status": "cropped", "label": "a", "path": "a/x.jpg", "box": (1, 2, 3)}, "4 numbers"),
])
def test_record_validation(values, error):
    make = lambda: CropRecord(source_path="p.jpg", source_sha256=None, **values)  # noqa: E731
    if error is None:
        record = make()
        assert CropRecord.from_dict(json.loads(record.to_json())) == record
    else:
        with pytest.raises(ValueError, match=error):
            make()


def test_newer_version_is_refused():
    with pytest.raises(ValueError, match="newer"):
        CropRecord.from_dict({"source_path": "p", "source_sha256": None, "status": "empty", "reason": "x",
                              "version": 99})


def test_append_reopen_and_read(tmp_path):
    path = tmp_path / "manifest.jsonl"
    with ManifestWriter(path) as writer:
        writer.append(_crop(0))
    with ManifestWriter(path) as writer:
        writer.append(_crop(1))
    assert read_manifest(path) == [_crop(0), _crop(1)]


def test_killed_write_leaves_a_tail_that_is_dropped_and_cut(tmp_path):
    path = tmp_path / "manifest.jsonl"
    write_manifest(path, [_crop(0)])
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(_crop(1).to_json()[:40])  # a kill in the middle of a line
    assert read_manifest(path) == [_crop(0)]
    with ManifestWriter(path) as writer:
        writer.append(_crop(2))
    assert read_manifest(path) == [_crop(0), _crop(2)]


def test_corrupt_complete_line_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "manifest.jsonl"
    path.write_text(_crop(0).to_json() + "\n{not json}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="manifest.jsonl:2"):
        read_manifest(path)


def test_a_process_killed_mid_append_loses_at_most_the_line_in_flight(tmp_path):
    path = tmp_path / "manifest.jsonl"
    script = textwrap.dedent(f"""
        import os
        from detcrop.data.manifest import CropRecord, ManifestWriter
        writer = ManifestWriter({str(path)!r})
        for index in range(5):
            writer.append(CropRecord(source_path=f"p{{index}}", source_sha256=None, status="empty", reason="none"))
        writer._handle.write('{{"source_path": "half')
        writer._handle.flush()
        os._exit(9)
    """)
    completed = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd())
    assert completed.returncode == 9
    assert [record.source_path for record in read_manifest(path)] == [f"p{index}" for index in range(5)]


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "out.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as handle:
            handle.write("{partial")
            raise RuntimeError("crash half-way")
    assert json.loads(path.read_text()) == {"a": 1}
    assert [entry.name for entry in tmp_path.iterdir()] == ["out.json"]
    with pytest.raises(ValueError, match="whole files"):
        with atomic_open(path, "a"):
            pass


def test_atomic_files_get_the_umask_mode_not_private(tmp_path):
    from detcrop.data.atomic import current_umask

    path = tmp_path / "shared.json"
    atomic_write_json(path, {"a": 1})
    assert path.stat().st_mode & 0o777 == 0o666 & ~current_umask()

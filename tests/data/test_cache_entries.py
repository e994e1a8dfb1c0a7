"""`data.cache.cached_file`: a cache entry is used only when its sidecar vouches for it (issue 25, rows 5 and 7)."""

from __future__ import annotations

import logging
import shutil

import pytest

from detcrop.data.cache import cached_file, sidecar_path
from detcrop.data.images import bytes_sha256

SOURCE = bytes_sha256(b"the source")


def _build_counter():
    built = []

    def build() -> bytes:
        built.append(1)
        return b"entry made from the source"
    return built, build


def _load(path):
    payload = path.read_bytes()
    if not payload.startswith(b"entry"):
        raise ValueError("not an entry")
    return payload


def _truncate(entry, other):
    entry.write_bytes(entry.read_bytes()[:5])


def _drop_sidecar(entry, other):
    sidecar_path(entry).unlink()


def _copy_other_entry(entry, other):  # another source's entry and its sidecar under this name
    shutil.copy(other, entry)
    shutil.copy(sidecar_path(other), sidecar_path(entry))


def _copy_other_entry_only(entry, other):
    shutil.copy(other, entry)


def _garbage_sidecar(entry, other):
    sidecar_path(entry).write_text("{not json")


def _folder_in_its_place(entry, other):
    entry.unlink()
    entry.mkdir()


@pytest.mark.parametrize("damage, reason", [
    (_truncate, "content changed"),
    (_drop_sidecar, "no record"),
    (_copy_other_entry, "made from something else"),
    (_copy_other_entry_only, "content changed"),
    (_garbage_sidecar, "record is unreadable"),
    (_folder_in_its_place, "not a file"),
])
def test_a_bad_entry_is_a_miss_with_one_warning_then_rebuilt(tmp_path, caplog, damage, reason):
    entry, other = tmp_path / "m.onnx", tmp_path / "other.onnx"
    built, build = _build_counter()
    assert cached_file(entry, SOURCE, build, _load) == b"entry made from the source"
    cached_file(other, bytes_sha256(b"another source"), lambda: b"entry of another source", _load)
    assert cached_file(entry, SOURCE, build, _load) and len(built) == 1  # a good entry is reused
    damage(entry, other)
    with caplog.at_level(logging.WARNING, logger="detcrop.data.cache"):
        assert cached_file(entry, SOURCE, build, _load) == b"entry made from the source"
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(entry) in warnings[0] and reason in warnings[0]
    assert len(built) == 2
    assert cached_file(entry, SOURCE, build, _load) and len(built) == 2  # and the rebuilt one holds


def test_an_entry_that_does_not_load_is_rebuilt(tmp_path, caplog):
    entry = tmp_path / "m.onnx"
    loads = []

    def load_once_badly(path):
        loads.append(path)
        if len(loads) == 1:
            raise RuntimeError("InvalidProtobuf")
        return path.read_bytes()

    built, build = _build_counter()
    cached_file(entry, SOURCE, build, lambda path: path)
    with caplog.at_level(logging.WARNING, logger="detcrop.data.cache"):
        assert cached_file(entry, SOURCE, build, load_once_badly) == b"entry made from the source"
    assert len(built) == 2 and "InvalidProtobuf" in caplog.text and str(entry) in caplog.text


def test_a_fresh_entry_that_does_not_load_raises(tmp_path):
    with pytest.raises(ValueError, match="not an entry"):
        cached_file(tmp_path / "m.onnx", SOURCE, lambda: b"garbage", _load)

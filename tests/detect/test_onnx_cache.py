"""The SSD's ONNX conversion cache (issue 25, row 5): a truncated or foreign file is converted again
with one warning, never a dead end. The conversion is faked: this is about the cache, not tf2onnx."""

from __future__ import annotations

import logging
import shutil

import pytest

import detcrop.detect.onnx_detectors as onnx_detectors


@pytest.fixture()
def fake_conversion(monkeypatch):
    converted = []

    def convert_ssd_graph(graph_path):
        converted.append(str(graph_path))
        return b"ONNX of " + open(graph_path, "rb").read()

    monkeypatch.setattr(onnx_detectors, "convert_ssd_graph", convert_ssd_graph)
    return converted


def _truncate(entry, other):
    entry.write_bytes(entry.read_bytes()[:4])


def _copy_other(entry, other):
    shutil.copy(other, entry)


@pytest.mark.parametrize("damage", [_truncate, _copy_other])
def test_a_bad_cached_ssd_conversion_is_converted_again(tmp_path, caplog, fake_conversion, damage):
    graph, other_graph = tmp_path / "ssd.pb", tmp_path / "other.pb"
    graph.write_bytes(b"graph one")
    other_graph.write_bytes(b"graph two")
    cache = tmp_path / "onnx"
    entry = onnx_detectors.converted_ssd_path(graph, cache)
    other = onnx_detectors.converted_ssd_path(other_graph, cache)
    assert onnx_detectors.converted_ssd_path(graph, cache) == entry and len(fake_conversion) == 2
    damage(entry, other)
    with caplog.at_level(logging.WARNING, logger="detcrop"):
        assert onnx_detectors.converted_ssd_path(graph, cache) == entry
    assert len(fake_conversion) == 3 and entry.read_bytes() == b"ONNX of graph one"
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(entry) in warnings[0]

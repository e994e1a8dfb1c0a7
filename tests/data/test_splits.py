"""Splits: ratios, stratification, groups never on both sides, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from detcrop.data.folders import scan_class_folders
from detcrop.data.manifest import CropRecord, write_manifest
from detcrop.data.splits import group_ids, grouped_stratified_split, source_hashes_from_manifest, split_class_folders
from imagegen import make_class_folders


def test_group_ids_join_transitively():
    assert group_ids([["a"], ["b"], ["a", "c"], ["c", "d"], ["d"], [None]]) == [0, 1, 0, 0, 0, 2]


def _random_problem(seed: int):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=300)
    groups = rng.integers(0, 120, size=300)  # many samples share a group
    # Make each group single-label most of the time, as crops of one photo are.
    labels = np.array([groups[index] % 4 if rng.random() < 0.9 else labels[index] for index in range(300)])
    return labels.tolist(), groups.tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("val_ratio, test_ratio", [(0.2, 0.0), (0.2, 0.1), (0.5, 0.0)])
def test_split_properties(seed, val_ratio, test_ratio):
    labels, groups = _random_problem(seed)
    split = grouped_stratified_split(labels, groups, val_ratio, test_ratio, seed=seed)
    sides = [set(split.train), set(split.val), set(split.test)]
    assert sum(len(side) for side in sides) == len(labels)
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    side_groups = [{groups[index] for index in side} for side in sides]
    assert not (side_groups[0] & side_groups[1] or side_groups[0] & side_groups[2] or side_groups[1] & side_groups[2])
    assert abs(len(split.val) / len(labels) - val_ratio) < 0.06
    assert abs(len(split.test) / len(labels) - test_ratio) < 0.06
    for label in range(4):
        assert any(labels[index] == label for index in split.val)
    assert split == grouped_stratified_split(labels, groups, val_ratio, test_ratio, seed=seed)


def test_different_seeds_give_different_splits():
    labels, groups = _random_problem(0)
    assert grouped_stratified_split(labels, groups, seed=0) != grouped_stratified_split(labels, groups, seed=1)


def test_tiny_class_still_reaches_val():
    split = grouped_stratified_split([0] * 5 + [1] * 5, list(range(10)), val_ratio=0.1)
    val_labels = {0 if index < 5 else 1 for index in split.val}
    assert val_labels == {0, 1}


@pytest.mark.parametrize("val_ratio, test_ratio", [(1.0, 0.0), (-0.1, 0.0), (0.6, 0.5)])
def test_bad_ratios_are_refused(val_ratio, test_ratio):
    with pytest.raises(ValueError, match="ratio"):
        grouped_stratified_split([0, 1], [0, 1], val_ratio, test_ratio)


def test_crops_of_one_photo_and_copies_stay_together(tmp_path):
    make_class_folders(tmp_path, {"a": 10, "b": 10})
    (tmp_path / "a" / "dup.png").write_bytes((tmp_path / "a" / "0.png").read_bytes())
    records = [
        CropRecord(source_path=f"photo{index // 2}.jpg", source_sha256=f"src{index // 2}", status="cropped",
                   label=label, path=f"{label}/{index % 10}.png")
        for index, label in enumerate(["a"] * 10 + ["b"] * 10)
    ]
    write_manifest(tmp_path / "manifest.jsonl", records)
    dataset = scan_class_folders(tmp_path)
    sources = source_hashes_from_manifest(tmp_path)
    assert len(sources) == 20
    for seed in range(5):
        split = split_class_folders(dataset, 0.3, seed=seed, source_by_path=sources)
        side_of = {dataset.samples[index].path.name + dataset.samples[index].label: side
                   for side, indices in (("train", split.train), ("val", split.val)) for index in indices}
        assert side_of["0.pnga"] == side_of["1.pnga"] == side_of["dup.pnga"]
        assert side_of["2.pngb"] == side_of["3.pngb"]

"""Splits that never leak: stratified by class, grouped by content and by source photo.

Two samples are in one group when they share any key (their own content hash, the source
photo they were cropped from, ...). Groups are joined transitively (union-find), then whole
groups are dealt to the sides so that each class's share on each side follows the ratios.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
import os
from pathlib import Path
from typing import TYPE_CHECKING, Hashable, Mapping, Sequence

import numpy as np

from detcrop.data.images import file_sha256
from detcrop.data.layout import MANIFEST_NAME
from detcrop.data.manifest import iter_manifest

if TYPE_CHECKING:
    from detcrop.data.folders import ClassFolderDataset


@dataclass(frozen=True)
class Split:
    """Indices into the sample list, per side."""

    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...] = ()


def group_ids(keys_per_sample: Sequence[Sequence[Hashable]]) -> list[int]:
    """Connected components of samples that share any key; returns one group id per sample.

    >>> group_ids([["a"], ["b"], ["a", "c"], ["c"]])
    [0, 1, 0, 0]
    """
    parent = list(range(len(keys_per_sample)))

    def find(item: int) -> int:
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    first_owner: dict[Hashable, int] = {}
    for index, keys in enumerate(keys_per_sample):
        for key in keys:
            if key is None:
                continue
            owner = first_owner.setdefault(key, index)
            root_a, root_b = find(owner), find(index)
            if root_a != root_b:
                parent[max(root_a, root_b)] = min(root_a, root_b)
    roots = [find(index) for index in range(len(keys_per_sample))]
    renumber: dict[int, int] = {}
    return [renumber.setdefault(root, len(renumber)) for root in roots]


def grouped_stratified_split(
    labels: Sequence[int],
    groups: Sequence[int],
    val_ratio: float = 0.2,
    test_ratio: float = 0.0,
    seed: int = 0,
) -> Split:
    """Split sample indices into train/val/test with whole groups on one side.

    Each group takes the side of its most common label; within a label, groups are shuffled
    with `seed` and dealt greedily to the side furthest below its target count, so class
    shares follow the ratios as closely as group sizes allow. A class with enough groups
    keeps at least one in train and one on each side with a non-zero ratio.

    >>> split = grouped_stratified_split([0, 0, 0, 1, 1, 1], [0, 1, 2, 3, 4, 5], 1 / 3)
    >>> len(split.train), len(split.val)
    (4, 2)
    """
    if len(labels) != len(groups):
        raise ValueError(f"labels and groups differ in length: {len(labels)} != {len(groups)}")
    if not (0.0 <= val_ratio < 1.0 and 0.0 <= test_ratio < 1.0 and val_ratio + test_ratio < 1.0):
        raise ValueError(
            f"val_ratio and test_ratio must be in [0, 1) with a sum below 1, got {val_ratio} and {test_ratio}"
        )
    members: dict[int, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    groups_by_label: dict[int, list[int]] = defaultdict(list)
    for group, indices in members.items():
        votes = np.bincount([labels[index] for index in indices])
        groups_by_label[int(np.argmax(votes))].append(group)

    rng = np.random.default_rng(seed)
    ratios = np.array([1.0 - val_ratio - test_ratio, val_ratio, test_ratio])
    sides: list[list[int]] = [[], [], []]
    for label in sorted(groups_by_label):
        label_groups = sorted(groups_by_label[label])
        rng.shuffle(label_groups)
        targets = ratios * sum(len(members[group]) for group in label_groups)
        filled = np.zeros(3)
        dealt: list[list[int]] = [[], [], []]
        for group in label_groups:
            # The side furthest below its target takes the group; sides with ratio 0 never do.
            side = int(np.argmax(np.where(ratios > 0, targets - filled, -np.inf)))
            dealt[side].append(group)
            filled[side] += len(members[group])
        for side in (1, 2):
            # A tiny class still gets one group on every requested side, taken from train.
            if ratios[side] > 0 and not dealt[side] and len(dealt[0]) >= 2:
                smallest = min(dealt[0], key=lambda group: len(members[group]))
                dealt[0].remove(smallest)
                dealt[side].append(smallest)
        for side in range(3):
            for group in dealt[side]:
                sides[side].extend(members[group])
    return Split(*(tuple(sorted(side)) for side in sides))


def split_class_folders(
    dataset: "ClassFolderDataset",
    val_ratio: float = 0.2,
    test_ratio: float = 0.0,
    seed: int = 0,
    sha256_by_path: Mapping[str, str] | None = None,
    source_by_path: Mapping[str, str] | None = None,
) -> Split:
    """Split a scanned class-folder dataset, grouping byte-identical files and crops of one photo.

    `sha256_by_path` saves re-hashing (e.g. from `validate_dataset`); `source_by_path` maps a
    crop's path to its source photo's hash, as read from the dataset's crop manifest
    (`source_hashes_from_manifest`).
    """
    sha256_by_path = dict(sha256_by_path or {})
    source_by_path = dict(source_by_path or {})
    keys = []
    for sample in dataset.samples:
        key = str(sample.path)
        digest = sha256_by_path.get(key)
        if digest is None:
            try:
                digest = file_sha256(sample.path)
            except OSError:
                digest = f"unreadable:{key}"  # its own group; the caller skips the file anyway
        source = source_by_path.get(key)
        keys.append([("content", digest)] + ([("source", source)] if source else []))
    return grouped_stratified_split(dataset.labels, group_ids(keys), val_ratio, test_ratio, seed)


def source_hashes_from_manifest(root: str | os.PathLike) -> dict[str, str]:
    """Crop path -> source photo hash, from `ROOT/manifest.jsonl` when the dataset has one."""
    root = Path(root)
    result = {}
    for record in iter_manifest(root / MANIFEST_NAME):
        if record.path and record.source_sha256:
            result[str(root / record.path)] = record.source_sha256
    return result

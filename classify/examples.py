"""`Examples`: the one index space of a training run (row i of every array is image i)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Examples:
    """The usable images of a dataset: row i of `paths`, `labels` and `sha256s` is image i.

    `train` and `val` are row indices. Every later step (features, head, fine-tuning, reports)
    indexes these rows; `keep` is the one way rows leave.
    """

    paths: tuple[Path, ...]
    labels: np.ndarray  # int64 class index per row
    sha256s: tuple[str, ...]
    train: np.ndarray  # int64 rows of the train side
    val: np.ndarray  # int64 rows of the val side

    def keep(self, rows: Sequence[int]) -> "Examples":
        """Only `rows` (ascending), renumbered 0..len(rows)-1; the split follows them."""
        rows = np.asarray(rows, dtype=np.int64)
        new_row = np.full(len(self.paths), -1, dtype=np.int64)
        new_row[rows] = np.arange(len(rows))
        return Examples(
            paths=tuple(self.paths[row] for row in rows), labels=self.labels[rows],
            sha256s=tuple(self.sha256s[row] for row in rows),
            train=new_row[self.train][new_row[self.train] >= 0], val=new_row[self.val][new_row[self.val] >= 0],
        )

    def labelled(self) -> np.ndarray:
        """The train and val rows together, ascending (what a refit trains on)."""
        return np.sort(np.concatenate([self.train, self.val]))

    def identity(self) -> str:
        """A digest of the rows, their content and the split (a fine-tuning backup must match it)."""
        payload = json.dumps([[str(path) for path in self.paths], list(self.sha256s), self.labels.tolist(),
                              self.train.tolist(), self.val.tolist()])
        return hashlib.sha256(payload.encode()).hexdigest()

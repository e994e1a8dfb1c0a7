"""What trains after the head: one module per `TrainConfig.fine_tune` value, each with ``run(job) -> Outcome``.

- `head_only` (``none``): the frozen base and the head as `fit_head` left them.
- `partial` (the default): the top blocks and the head on activations cached at a cut.
- `full`: the top layers of the base on images, with augmentation; resumable after a kill.

`training.train` builds a `MemberJob` per model after the head phase and calls the strategy's
`run`; what comes back (`Outcome`) is what the reports and the bundle are made of.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from detcrop.classify.config import TrainConfig
from detcrop.classify.examples import Examples
from detcrop.classify.model import FeatureExtractor


@dataclass
class MemberJob:
    """One model's state after the head phase: what a strategy trains from."""

    config: TrainConfig
    extractor: FeatureExtractor
    head: Any  # keras.Model on pooled features, trained
    examples: Examples
    features: dict[str, np.ndarray]  # view ("orig", "flip") -> pooled features, row-aligned with examples
    maps: dict[str, np.ndarray] | None  # view -> activations at the cut (partial fine-tuning), else None
    classes: int
    run_dir: Path
    history: dict[str, list]  # every phase's rows (fitting.EpochLog)
    callbacks: Sequence = ()  # the caller's Keras callbacks
    tag: str = ""  # "member1 " for ensemble members after the first: prefixes phase names
    progress: bool = False  # progress bars on the console


@dataclass
class Outcome:
    """What a strategy made of a `MemberJob`."""

    model: Any  # keras.Model: pixels 0..255 (any size) -> probabilities
    probabilities: np.ndarray  # on examples.val, flip-TTA averaged when the config asks
    examples: Examples  # the rows that took part (full fine-tuning drops images that stopped loading)
    val_images: list | None = None  # the val originals when the strategy loaded them
    skipped: list[tuple[str, str]] = field(default_factory=list)
    refit: bool = False  # the bundle's model was trained again on train + val after val measured it
    timings: dict[str, float] = field(default_factory=dict)


def flip_averaged(predict, views: dict[str, np.ndarray], tta_flip: bool) -> np.ndarray:
    """`predict(views["orig"])`, averaged with `predict(views["flip"])` when `tta_flip`."""
    probabilities = np.asarray(predict(views["orig"]))
    if tta_flip:
        probabilities = (probabilities + np.asarray(predict(views["flip"]))) / 2
    return probabilities

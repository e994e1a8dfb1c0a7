"""Reproducible model building without seeding anything global behind the caller.

Keras gives every initializer or layer built without a seed one drawn from Python's `random`.
`python_random_seeded(seed)` seeds that generator for one block and then restores the caller's
state, so a random-init model is the same for the same seed and the caller's own random
numbers are untouched. Everything else random in detcrop takes its seed explicitly (seeded
layers, `np.random.default_rng(seed)`, seeded tf.data shuffles).
"""

from __future__ import annotations

import contextlib
import random
from typing import Iterator


@contextlib.contextmanager
def python_random_seeded(seed: int) -> Iterator[None]:
    """Seed Python's `random` for the block only.

    >>> import random
    >>> with python_random_seeded(3):
    ...     first = random.random()
    >>> with python_random_seeded(3):
    ...     first == random.random()
    True
    """
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)

"""The baseline's two recipes (``seed`` and ``fast``) and `BaselineConfig`, the defaults of `detcrop baseline`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from detcrop.data.config import ConfigError

#: Smallest square input the seed CNN accepts: 18 -> 16 -> 8 -> 6 -> 3 -> 1.
MIN_IMAGE_SIZE = 18


@dataclass(frozen=True)
class Recipe:
    """How one recipe builds and trains its model."""

    name: str  # "seed" or "fast"
    epochs: int  # passes over the training set
    batch_size: int  # images per step
    learning_rate: float  # Adam(W) learning rate (the peak, when there is a schedule)
    schedule: str  # "constant" or "warmup-cosine" (linear warm-up for warmup_epochs, cosine to 0)
    warmup_epochs: float  # length of the linear warm-up, in epochs
    weight_decay: float  # AdamW decoupled weight decay (0: plain Adam)
    description: str  # one line for help texts and reports


RECIPES: dict[str, Recipe] = {
    "seed": Recipe(
        name="seed", epochs=10, batch_size=32, learning_rate=1e-3, schedule="constant", warmup_epochs=0.0,
        weight_decay=0.0,
        description="the classic tutorial CNN (122,570 params at 32x32x3), Adam 1e-3, batch 32, 10 epochs",
    ),
    "fast": Recipe(
        name="fast", epochs=5, batch_size=128, learning_rate=3e-3, schedule="warmup-cosine", warmup_epochs=0.3,
        weight_decay=1e-4,
        description="the seed CNN plus batch norm and dropout, AdamW 3e-3 with warm-up + cosine, batch 128, 5 epochs",
    ),
}


@dataclass(frozen=True)
class BaselineConfig:
    """Defaults of `detcrop baseline`; None means "the recipe's value"."""

    dataset: str = "fashion-mnist"  # "cifar10", "fashion-mnist" or a class-folder root (ROOT/<class>/<image>)
    data_dir: str | None = None  # folder with the dataset files; None searches the standard places
    recipe: str = "seed"  # "seed" (the classic CNN, exactly) or "fast" (tuned for a 2-core CPU)
    epochs: int | None = None  # passes over the training set (None: the recipe's)
    batch_size: int | None = None  # images per step (None: the recipe's)
    learning_rate: float | None = None  # peak learning rate (None: the recipe's)
    seed: int = 0  # seeds initialisation, shuffling, subsampling and the folder split (no global generator)
    limit: int | None = None  # use at most this many train and this many test images (quick runs)
    input_size: int = 32  # class folders: images are resized to this square side
    test_ratio: float = 0.2  # class folders: share of images held out as the test set
    allow_download: bool = True  # fall back to keras.datasets (network) when no local copy exists

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ConfigError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        for name in ("epochs", "batch_size", "limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.input_size < MIN_IMAGE_SIZE:
            raise ConfigError(
                f"input_size must be at least {MIN_IMAGE_SIZE} (the seed CNN's three valid 3x3 convolutions "
                f"and two poolings), got {self.input_size}"
            )
        if not 0.0 < self.test_ratio < 1.0:
            raise ConfigError(f"test_ratio must be between 0 and 1, got {self.test_ratio}")

    def resolved(self) -> "BaselineConfig":
        """The same config with the recipe's epochs, batch size and learning rate filled in."""
        recipe = RECIPES[self.recipe]
        return dataclasses.replace(
            self,
            epochs=self.epochs or recipe.epochs,
            batch_size=self.batch_size or recipe.batch_size,
            learning_rate=self.learning_rate or recipe.learning_rate,
        )


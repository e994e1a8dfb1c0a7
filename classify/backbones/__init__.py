"""Backbones: the registry (`registry`: one name -> base, weights, preprocessing) and the
EfficientNet-Lite port (`efficientnet_lite`). The registry's public names are re-exported here,
so ``from detcrop.classify.backbones import build_base`` is the way to build a base."""

from detcrop.classify.backbones.registry import (
    BACKBONES,
    Backbone,
    WeightsUnavailableError,
    build_base,
    get_backbone,
    register_bundle_layers,
    weights_source,
)

__all__ = ["BACKBONES", "Backbone", "WeightsUnavailableError", "build_base", "get_backbone", "register_bundle_layers",
           "weights_source"]

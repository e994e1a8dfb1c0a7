"""Config overrides: types coerced, unknown keys named with the nearest valid key."""

from __future__ import annotations

import json

import pytest

from detcrop.data.config import ConfigError, build_config, config_to_dict, load_config_file
from detcrop.data.validate import ValidationConfig


@pytest.mark.parametrize("overrides, expected, error", [
    ({}, ValidationConfig(), None),
    ({"min_images_per_class": "10"}, ValidationConfig(min_images_per_class=10), None),
    ({"max_imbalance": 2}, ValidationConfig(max_imbalance=2.0), None),
    ({"min_image_per_class": 3}, None, "did you mean 'min_images_per_class'"),
    ({"min_classes": "two"}, None, "whole number"),
    ({"min_classes": True}, None, "whole number"),
    ({"max_imbalance": [1]}, None, "number"),
])
def test_build_config(overrides, expected, error):
    if error:
        with pytest.raises(ConfigError, match=error):
            build_config(ValidationConfig, overrides)
    else:
        assert build_config(ValidationConfig, overrides) == expected


def test_round_trip_through_a_file(tmp_path):
    config = ValidationConfig(min_classes=3, max_imbalance=5.0)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config_to_dict(config)))
    assert load_config_file(ValidationConfig, path) == config
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_config_file(ValidationConfig, path)

"""Building the per-stage frozen config dataclasses from user-given keys.

Each stage keeps its defaults in one frozen dataclass with a comment per field. Overrides
come from the CLI or a JSON file; an unknown key is an error that names the nearest valid
key, and values are checked against the field's type before the dataclass is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

from detcrop.data.errors import DetcropError

T = TypeVar("T")


class ConfigError(DetcropError, ValueError):
    """A config key or value that does not fit the stage's dataclass."""


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in arguments:
            return None
        errors = []
        for option in arguments:
            if option is type(None):
                continue
            try:
                return _coerce(name, value, option)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"{name}: {value!r} fits none of {annotation}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [part for part in value.split(",") if part]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        item_type = arguments[0] if arguments else Any
        return tuple(_coerce(name, item, item_type) for item in value)
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{name}: expected a whole number, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{name}: expected a whole number, got {value!r}") from None
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected text, got {value!r}")
        return value
    return value


def build_config(cls: type[T], overrides: Mapping[str, Any] | None = None, base: T | None = None) -> T:
    """Return `cls` (a frozen dataclass) with `overrides` applied over `base` or the defaults.

    >>> build_config(ValidationConfig, {"min_images_per_class": "10"})  # doctest: +SKIP
    """
    overrides = dict(overrides or {})
    valid = {field.name: field for field in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in overrides:
        if key not in valid:
            nearest = difflib.get_close_matches(key, list(valid), n=1)
            hint = f"; did you mean {nearest[0]!r}?" if nearest else ""
            raise ConfigError(f"unknown {cls.__name__} key {key!r}{hint} Valid keys: {', '.join(valid)}")
    values = {key: _coerce(key, value, hints[key]) for key, value in overrides.items()}
    instance = dataclasses.replace(base, **values) if base is not None else cls(**values)
    return instance


def config_to_dict(config: Any) -> dict:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def read_json_object(path: str | os.PathLike, what: str = "config keys") -> dict:
    """The JSON object in `path`; a `ConfigError` naming the file and `what` was expected otherwise."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: cannot read a JSON object of {what} ({error})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a JSON object of {what}, got {type(values).__name__}")
    return values


def load_config_file(cls: type[T], path: str | os.PathLike) -> T:
    """Build `cls` from a JSON file of overrides (e.g. a run's saved `config.json`)."""
    return build_config(cls, read_json_object(path))

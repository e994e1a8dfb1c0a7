"""Building the per-stage frozen config dataclasses from user-given keys.

Each stage keeps its defaults in one frozen dataclass with a comment per field. Overrides
come from the CLI or a JSON file; an unknown key is an error that names the nearest valid
key, and values are checked against the field's type before the dataclass is built. The
command-line flags are made from the same fields (`add_config_arguments`): ``--input-size``
is `input_size` in every command, with the field's comment as its help.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import io
import json
import logging
import os
import textwrap
import tokenize
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

from detcrop.data.errors import DetcropError

T = TypeVar("T")
logger = logging.getLogger(__name__)


class ConfigError(DetcropError, ValueError):
    """A config key or value that does not fit the stage's dataclass."""


@dataclasses.dataclass(frozen=True)
class RemovedKey:
    """A config key that left the product (ultralytics' `_handle_deprecation` is the model).

    A config holding it at `old_default` (a run's saved config.json) still loads, with one
    warning; any other value, and its flag on the command line, is refused naming `entry`, the
    benchmarks/RESULTS.md entry that says why it went. A dataclass lists its removed keys in a
    ``removed_keys`` class variable.
    """

    old_default: Any
    entry: str  # e.g. "benchmarks/RESULTS.md#memory"


def _removed_keys(cls: type) -> Mapping[str, RemovedKey]:
    return getattr(cls, "removed_keys", None) or {}


def drop_removed_keys(cls: type, overrides: Mapping[str, Any]) -> dict:
    """`overrides` without `cls`'s removed keys: one warning for those at their old default, a ConfigError otherwise."""
    removed = _removed_keys(cls)
    kept, dropped = {}, []
    for key, value in overrides.items():
        if key not in removed:
            kept[key] = value
        elif value == removed[key].old_default:
            dropped.append(key)
        else:
            raise ConfigError(f"{cls.__name__} key {key!r} was removed (it did not pay; see {removed[key].entry}); "
                              f"only its old default {removed[key].old_default!r} is still accepted, got {value!r}")
    if dropped:
        logger.warning("ignoring %s, removed from %s at their old defaults (see %s)", ", ".join(dropped),
                       cls.__name__, ", ".join(sorted({removed[key].entry for key in dropped})))
    return kept


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
    overrides = drop_removed_keys(cls, dict(overrides or {}))
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


# --------------------------------------------------------------------------- command-line flags

#: argparse destinations of config flags start with this, then "<Class>.<field>".
_FLAG_DEST = "config:"
#: ... and those of removed keys' flags with this.
_REMOVED_DEST = "removed:"


def field_help(cls: type) -> dict[str, str]:
    """Each field's help: its ``metadata["help"]``, else the comment beside it in `cls`'s source.

    The comment next to each default is the one documented place of that setting, so the
    command-line help is read from there rather than written twice.
    """
    comments: dict[str, str] = {}
    try:
        source = textwrap.dedent(inspect.getsource(cls))
        lines: dict[int, list[tokenize.TokenInfo]] = {}
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            lines.setdefault(token.start[0], []).append(token)
    except (OSError, TypeError, tokenize.TokenError, IndentationError):
        lines = {}
    skip = (tokenize.INDENT, tokenize.DEDENT, tokenize.NL, tokenize.NEWLINE)
    for tokens in lines.values():
        tokens = [token for token in tokens if token.type not in skip]
        if (len(tokens) >= 3 and tokens[0].type == tokenize.NAME and tokens[1].string == ":"
                and tokens[-1].type == tokenize.COMMENT):
            comments[tokens[0].string] = tokens[-1].string.lstrip("#").strip()
    return {item.name: item.metadata.get("help") or comments.get(item.name, "") for item in dataclasses.fields(cls)}


def _metavar(annotation: Any) -> str:
    arguments = [option for option in typing.get_args(annotation) if option is not type(None)]
    if typing.get_origin(annotation) in (tuple, list):
        return "A,B"
    if arguments:
        return _metavar(arguments[0])
    return {int: "N", float: "X", str: "TEXT"}.get(annotation, "VALUE")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, aliases: Mapping[str, Sequence[str]] | None = None,
                         exclude: Sequence[str] = (), shown: Sequence[str] | None = None) -> None:
    """One flag per field of the config dataclass `cls`: ``--field-name`` (and `aliases`).

    The help is `field_help` plus the default; a flag left out stays None, so `config_overrides`
    returns only what the user gave, and `build_config` parses and checks every value (a bad one
    is a one-line `ConfigError`). A yes/no field gets ``--name`` and ``--no-name``; a list field
    may be repeated or comma-separated. An alias of a yes/no field that starts with ``--no-``
    sets it to false, any other sets it to true. The same field name is the same flag, with the
    same meaning, in every command. With `shown`, only those fields are listed in ``--help``
    (the others still work); aliases are never listed. The flags of `cls`'s removed keys are
    accepted only to be refused by `config_overrides`, naming why they went.
    """
    aliases = aliases or {}
    defaults = cls()
    helps = field_help(cls)
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"settings ({cls.__name__}; also the keys of a config JSON)")
    for item in dataclasses.fields(cls):
        if item.name in exclude:
            continue
        flag = "--" + item.name.replace("_", "-")
        dest = f"{_FLAG_DEST}{cls.__name__}.{item.name}"
        default = getattr(defaults, item.name)
        shown_default = ",".join(map(str, default)) if isinstance(default, tuple) else default
        text = (f"{helps[item.name]} (default: {shown_default})" if helps[item.name]
                else f"default: {shown_default}").replace("%", "%%")
        if shown is not None and item.name not in shown:
            text = argparse.SUPPRESS
        annotation = hints[item.name]
        if annotation is bool:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=text)
            for alias in aliases.get(item.name, ()):
                group.add_argument(alias, dest=dest, action="store_const", const=not alias.startswith("--no-"),
                                   help=argparse.SUPPRESS)
            continue
        repeated = typing.get_origin(annotation) in (tuple, list)
        for spelling, spelling_help in ((flag, text), *((alias, argparse.SUPPRESS) for alias in aliases.get(item.name, ()))):
            group.add_argument(spelling, dest=dest, default=None, metavar=_metavar(annotation),
                               action="append" if repeated else "store", help=spelling_help)
    for key in _removed_keys(cls):
        flag = "--" + key.replace("_", "-")
        for spelling in (flag, "--no-" + flag[2:]) if isinstance(_removed_keys(cls)[key].old_default, bool) else (flag,):
            group.add_argument(spelling, dest=f"{_REMOVED_DEST}{cls.__name__}.{key}", nargs="?", const=True,
                               default=None, help=argparse.SUPPRESS)


def config_overrides(args: argparse.Namespace, cls: type) -> dict:
    """The fields of `cls` given as flags (see `add_config_arguments`), as `build_config` overrides."""
    prefix = f"{_FLAG_DEST}{cls.__name__}."
    for dest, value in vars(args).items():
        if dest.startswith(f"{_REMOVED_DEST}{cls.__name__}.") and value is not None:
            key = dest.split(".", 1)[1]
            raise ConfigError(f"--{key.replace('_', '-')} was removed (it did not pay; see "
                              f"{_removed_keys(cls)[key].entry})")
    overrides = {}
    for dest, value in vars(args).items():
        if dest.startswith(prefix) and value is not None:
            if isinstance(value, list):  # a repeated list flag: --target a --target b,c
                value = [part.strip() for item in value for part in str(item).split(",") if part.strip()]
            overrides[dest[len(prefix):]] = value
    return overrides

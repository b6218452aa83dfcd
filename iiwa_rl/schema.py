"""Typed configuration: plain dataclasses filled from YAML mappings, checked strictly.

`from_mapping(SomeConfig, data, where)` builds a dataclass from a mapping and refuses an
unknown key, a missing required key, a value of the wrong type, or one its
`__post_init__` rejects, with an error that names where the value came from (file and
dotted key path), what was expected and what was found.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A configuration value is wrong; the message says where and why."""


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _convert(annotation: Any, value: Any, where: str) -> Any:
    origin = get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: got {_describe(value)}")
    if origin is Literal:
        choices = get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{where}: expected one of {list(choices)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        return from_mapping(annotation, value, where)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_describe(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_describe(value)}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {_describe(value)}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_describe(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        args = get_args(annotation)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(
                _convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value))
            )
        item = args[0] if args else Any
        items = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping, typing.Mapping) or annotation is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_describe(value)}")
        args = get_args(annotation)
        value_type = args[1] if len(args) == 2 else Any
        return {str(k): _convert(value_type, v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"unsupported annotation {annotation!r} at {where}")


def from_mapping(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from `data`, checking keys and types (see module docstring)."""
    label = where or "top level"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{label}: expected a mapping of keys to values, got {_describe(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [key for key in data if key not in fields]
    if unknown:
        key = f"{where}.{unknown[0]}" if where else str(unknown[0])
        raise ConfigError(f"{key}: unknown key; expected one of: {', '.join(sorted(fields))}")
    hints = get_type_hints(cls)
    kwargs = {}
    for name, field in fields.items():
        key_where = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], key_where)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key_where}: required key is missing")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{label}: {error}") from None


def to_mapping(config: Any) -> Any:
    """The plain-data (YAML-ready) form of a config dataclass."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_mapping(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_mapping(v) for v in config]
    if isinstance(config, dict):
        return {k: to_mapping(v) for k, v in config.items()}
    return config


def check(condition: bool, message: str) -> None:
    """For `__post_init__` range checks: raise a ValueError that `from_mapping` locates."""
    if not condition:
        raise ValueError(message)

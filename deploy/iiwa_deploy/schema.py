"""Typed configuration: plain dataclasses filled from YAML or JSON mappings, checked strictly.

The one validator of the project: the training configs (iiwa_rl re-exports this module as
iiwa_rl.schema), the controller's robot configuration (config.py) and the policy contract
(contract.py) are all dataclasses read through `from_mapping`. It lives in the controller
package because the controller must run without the training stack: numpy-free even, it
needs the standard library only.

`from_mapping(SomeConfig, data, where)` builds a dataclass from a mapping and refuses an
unknown key, a missing required key, a value of the wrong type, a number that is not
finite (every float: NaN or infinity is never a meaningful setting), a number outside the
range its annotation declares, or one its `__post_init__` rejects, with an error that
names where the value came from (file and dotted key path), what was expected and what
was found.

Ranges are declared on the field's type, so a reader sees them where the field is:

    learning_rate: Annotated[float, Range(gt=0)] = 3e-4
    gamma: Discount = 0.99          # an alias for Annotated[float, Range(gt=0, le=1)]
    velocity: Annotated[list[float], Range(gt=0)]   # a Range on a list bounds each item

`__post_init__` is left with what involves several fields (min < max, buffer >= batch).

Two phrasings exist because two kinds of user read them: the training configs say
"ppo: gamma must be in (0, 1], got 1.5" and "ppo.epoch: unknown key" (the section, then the
key, as their `__post_init__` messages read); the controller's files say
"safety.stale_timeout_s: must be a positive number, got 0" and "safety: unknown key 'x'"
(the full key first, as an operator greps the YAML for it). Each `from_mapping` call picks
one (`phrasing=`); the checks are the same.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A configuration value is wrong; the message says where and why."""


@dataclasses.dataclass(frozen=True)
class Range:
    """The allowed interval of a number: `gt`/`ge` bound it below (exclusive/inclusive),
    `lt`/`le` above. Used as ``Annotated[float, Range(gt=0, le=1)]``."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def contains(self, value: float) -> bool:
        return (
            (self.gt is None or value > self.gt)
            and (self.ge is None or value >= self.ge)
            and (self.lt is None or value < self.lt)
            and (self.le is None or value <= self.le)
        )

    def describe(self) -> str:
        """'> 0', '>= 1', 'in (0, 1]', ... as a reader of the error message expects."""

        def show(bound: float) -> str:
            return str(bound) if isinstance(bound, int) else f"{bound:g}"

        low, low_open = (self.gt, True) if self.gt is not None else (self.ge, False)
        high, high_open = (self.lt, True) if self.lt is not None else (self.le, False)
        if low is not None and high is not None:
            opening, closing = "(" if low_open else "[", ")" if high_open else "]"
            return f"in {opening}{show(low)}, {show(high)}{closing}"
        if low is not None:
            return f"{'>' if low_open else '>='} {show(low)}"
        if high is not None:
            return f"{'<' if high_open else '<='} {show(high)}"
        return "any number"


# The ranges the configs use again and again.
PositiveInt = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, Range(ge=0)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
UnitInterval = Annotated[float, Range(ge=0, le=1)]  # a fraction, both ends allowed
Discount = Annotated[float, Range(gt=0, le=1)]  # gamma: 0 would ignore every future reward
# numpy's and torch's generators both take any seed in [0, 2**32); beyond, one of them
# overflows and negative seeds are refused by numpy.
Seed = Annotated[int, Range(ge=0, lt=2**32)]


@dataclasses.dataclass(frozen=True)
class Phrasing:
    """How an out-of-range value and an unknown key are reported (see the module docstring)."""

    key_first: bool  # "safety.x: must be ..." rather than "safety: x must be ..."

    def out_of_range(self, where: str, value: Any, allowed: Range) -> ConfigError:
        if self.key_first:
            # "a positive number": what the controller's messages have always said for > 0.
            words = "a positive number" if allowed == Range(gt=0) else allowed.describe()
            return ConfigError(f"{where}: must be {words}, got {value!r}")
        # "ppo: gamma must be in (0, 1], got 1.5": the section, then the key's own name, the
        # same shape as a __post_init__ message, so the two kinds of check read alike.
        section, _, name = where.rpartition(".")
        subject = f"{section}: {name}" if section else name
        return ConfigError(f"{subject} must be {allowed.describe()}, got {value!r}")

    def unknown_key(self, where: str, key: Any, allowed: list[str]) -> ConfigError:
        expected = ", ".join(sorted(allowed))
        if self.key_first:
            return ConfigError(
                f"{where or 'top level'}: unknown key '{key}'; expected one of: {expected}"
            )
        path = f"{where}.{key}" if where else str(key)
        return ConfigError(f"{path}: unknown key; expected one of: {expected}")


TRAINING_PHRASING = Phrasing(key_first=False)
CONTROLLER_PHRASING = Phrasing(key_first=True)


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _convert(annotation: Any, value: Any, where: str, phrasing: Phrasing) -> Any:
    origin = get_origin(annotation)
    if annotation is Any:
        return value
    if origin is Annotated:
        base, *extras = get_args(annotation)
        converted = _convert(base, value, where, phrasing)
        for allowed in extras:
            if isinstance(allowed, Range) and converted is not None:
                # On a list, the range bounds each item (joint limits: one per joint).
                items = converted if isinstance(converted, (list, tuple)) else [converted]
                for index, item in enumerate(items):
                    if not allowed.contains(item):
                        item_where = where if items is not converted else f"{where}[{index}]"
                        raise phrasing.out_of_range(item_where, item, allowed)
        return converted
    if origin in (Union, types.UnionType):
        options = get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where, phrasing)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: got {_describe(value)}")
    if origin is Literal:
        choices = get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{where}: expected one of {list(choices)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):  # already built: its own __post_init__ checked it
            return value
        return from_mapping(annotation, value, where, phrasing)
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
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float (10**400)
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
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
                _convert(a, v, f"{where}[{i}]", phrasing)
                for i, (a, v) in enumerate(zip(args, value, strict=True))
            )
        item = args[0] if args else Any
        items = [_convert(item, v, f"{where}[{i}]", phrasing) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping, typing.Mapping) or annotation is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_describe(value)}")
        args = get_args(annotation)
        value_type = args[1] if len(args) == 2 else Any
        return {str(k): _convert(value_type, v, f"{where}.{k}", phrasing) for k, v in value.items()}
    raise TypeError(f"unsupported annotation {annotation!r} at {where}")


def from_mapping(
    cls: type,
    data: Any,
    where: str,
    phrasing: Phrasing = TRAINING_PHRASING,
    ignore_unknown: bool = False,
) -> Any:
    """Build dataclass `cls` from `data`, checking keys and types (see module docstring).
    `ignore_unknown` lets keys the dataclass does not declare pass at this level only (a
    policy contract's informational top-level keys)."""
    label = where or "top level"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{label}: expected a mapping of keys to values, got {_describe(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [key for key in data if key not in fields]
    if unknown and not ignore_unknown:
        raise phrasing.unknown_key(where, unknown[0], list(fields))
    hints = _type_hints(cls)
    kwargs = {}
    for name, field in fields.items():
        key_where = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], key_where, phrasing)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key_where}: required key is missing")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{label}: {error}") from None


def check_fields(instance: Any, where: str, phrasing: Phrasing = TRAINING_PHRASING) -> None:
    """Check the fields of a dataclass built directly (not through `from_mapping`) against
    their annotations, as `from_mapping` would: for a `__post_init__`, so that a config
    made in code (`RobotConfig.replace`, a test's `GripperLimits(...)`) is held to the same
    rules as one read from a file."""
    hints = _type_hints(type(instance))
    for field in dataclasses.fields(instance):
        key_where = f"{where}.{field.name}" if where else field.name
        _convert(hints[field.name], getattr(instance, field.name), key_where, phrasing)


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls, include_extras=True)


def to_mapping(config: Any) -> Any:
    """The plain-data (YAML-ready) form of a config dataclass."""
    if hasattr(config, "tolist"):  # a numpy array or scalar, without importing numpy
        return config.tolist()
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

"""Settings declared once: a dataclass field carries its type, default, allowed values and description.

Modelled on ros2_controllers' generate_parameter_library, without the code generation: each
setting is one ``setting(...)`` field, and everything else is read off the dataclass. ``check``
validates every field by its rule, ``coerce`` turns a parameter value (YAML, ``-p``, a launch
argument) into the field's real type, and ros/params.py derives the ROS declarations, the README
table and config/policy.yaml from the same fields. Torch- and ROS-free.
"""
from __future__ import annotations

import array
import types
import typing
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """What a setting accepts, and the one line that documents it."""
    doc: str
    choices: tuple[str, ...] = ()  # allowed words (for an int | str setting: the words besides integers)
    gt: float | None = None  # value must be > gt
    ge: float | None = None  # value must be >= ge
    lt: float | None = None  # value must be < lt
    shown: str | None = None  # the default as documented, where its literal says nothing ("(required)")
    live: bool = False  # a running node applies a new value (ros2 param set) from its next tick

    def describe(self) -> str:
        """The constraint in words, for descriptors and errors."""
        parts = [f"one of {', '.join(self.choices)}"] if self.choices else []
        parts += [f"> {self.gt:g}"] if self.gt is not None else []
        parts += [f">= {self.ge:g}"] if self.ge is not None else []
        parts += [f"< {self.lt:g}"] if self.lt is not None else []
        return "; ".join(parts)


def setting(default: Any, doc: str, *, choices: tuple[str, ...] = (), gt: float | None = None,
            ge: float | None = None, lt: float | None = None, shown: str | None = None, live: bool = False) -> Any:
    """A dataclass field with its rule; list defaults are copied per instance."""
    rule = Rule(doc, tuple(choices), gt, ge, lt, shown, live)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


def rule_of(f: Field) -> Rule | None:
    return f.metadata.get("rule")


def settings_of(cls_or_obj: Any) -> list[tuple[Field, Rule, Any]]:
    """(field, rule, real type) of every declared setting, in declaration order."""
    hints = typing.get_type_hints(cls_or_obj if isinstance(cls_or_obj, type) else type(cls_or_obj))
    return [(f, rule_of(f), hints[f.name]) for f in fields(cls_or_obj) if rule_of(f) is not None]


def default_of(f: Field) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


def check(obj: Any) -> None:
    """Validate every setting of ``obj`` by its rule; ConfigError names the first that fails."""
    for f, rule, tp in settings_of(obj):
        value = getattr(obj, f.name)
        words = isinstance(value, str) and rule.choices
        if words and value not in rule.choices:
            raise ConfigError(f"{f.name} must be {_expected(rule, tp)}, got {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if ((rule.gt is not None and not value > rule.gt) or (rule.ge is not None and not value >= rule.ge)
                    or (rule.lt is not None and not value < rule.lt)):
                raise ConfigError(f"{f.name} must be {_expected(rule, tp)}, got {value!r}")


def _expected(rule: Rule, tp: Any) -> str:
    if isinstance(tp, types.UnionType) and rule.choices:  # a number or a word
        if float in typing.get_args(tp):
            return f"a number ({rule.describe().split('; ', 1)[-1]}) or {' or '.join(repr(c) for c in rule.choices)}"
        bound = f" >= {rule.ge:g}" if rule.ge is not None else ""
        return f"an integer{bound} or {' or '.join(repr(c) for c in rule.choices)}"
    return rule.describe() or type_name(tp)


def type_name(tp: Any) -> str:
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if typing.get_origin(tp) is list:
        return f"a list of {type_name(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    return " or ".join(type_name(a) for a in typing.get_args(tp))


def coerce(name: str, value: Any, tp: Any, choices: tuple[str, ...] = ()) -> Any:
    """A parameter value as the real type ``tp``; integers where a decimal is meant are accepted.

    Raises ConfigError naming the parameter and the type expected."""
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"parameter {name!r} must be {expected}, got {value!r} ({type(value).__name__})")

    is_int = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, types.UnionType):  # a number, or one of the words (inference_lead: auto)
        real = float in typing.get_args(tp)
        if real and (is_int or isinstance(value, float)):
            return float(value)
        if is_int:
            return value
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise bad(f"{'a number' if real else 'an integer'} or {' or '.join(choices)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if tp is int:
        if is_int:
            return value
        raise bad("an integer")
    if tp is float:
        if is_int or isinstance(value, float):
            return float(value)
        raise bad("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if is_int or isinstance(value, float):
            return str(value)  # ros2 launch / -p type a bare 1.5 as a double; a path or name is still text
        raise bad("a string")
    if typing.get_origin(tp) is list:
        if value is None:
            return []
        if isinstance(value, array.array):  # rclpy gives double and integer arrays as array.array
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            raise bad(type_name(tp))
        item = typing.get_args(tp)[0]
        return [coerce(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    raise AssertionError(f"no coercion for {tp}")


def coerce_all(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (names of ``cls``'s settings) coerced to their fields' types."""
    known = {f.name: (rule, tp) for f, rule, tp in settings_of(cls)}
    return {k: coerce(k, v, known[k][1], known[k][0].choices) for k, v in values.items()}

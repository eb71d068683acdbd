"""Validate plain dicts (from YAML) against frozen dataclasses, collecting every problem.

A schema is an ordinary frozen dataclass; field types drive the checks and
``field(metadata=bounds(...))`` adds numeric ranges and choices. Errors name the dotted
key, what was expected and what was found.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


def bounds(
    min: float | None = None,  # noqa: A002 - mirrors the YAML vocabulary
    max: float | None = None,  # noqa: A002
    min_exclusive: bool = False,
    help: str = "",  # noqa: A002
) -> dict[str, Any]:
    """Field metadata: an inclusive (or exclusive-min) numeric range and a help line."""
    return {"min": min, "max": max, "min_exclusive": min_exclusive, "help": help}


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of {_type_name(get_args(tp)[1])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _found(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def convert(tp: Any, value: Any, key: str, errors: list[str]) -> Any:
    """Convert ``value`` to ``tp``, appending ``"key: expected ..., found ..."`` on mismatch."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            trial: list[str] = []
            result = convert(option, value, key, trial)
            if not trial:
                return result
        errors.append(f"{key}: expected {_type_name(tp)}, found {_found(value)}")
        return None
    if origin is Literal:
        if value not in get_args(tp):
            errors.append(f"{key}: expected {_type_name(tp)}, found {_found(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            errors.append(f"{key}: expected {_type_name(tp)}, found {_found(value)}")
            return None
        item_tp = get_args(tp)[0]
        return tuple(convert(item_tp, v, f"{key}[{i}]", errors) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{key}: expected {_type_name(tp)}, found {_found(value)}")
            return None
        val_tp = get_args(tp)[1]
        return {str(k): convert(val_tp, v, f"{key}.{k}", errors) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key, errors)
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(f"{key}: expected a boolean (true/false), found {_found(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{key}: expected an integer, found {_found(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{key}: expected a number, found {_found(value)}")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            errors.append(f"{key}: expected a string, found {_found(value)}")
        return value
    return value


def _check_bounds(meta: Any, value: Any, key: str, errors: list[str]) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None:
        if meta.get("min_exclusive") and not value > lo:
            errors.append(f"{key}: expected a value > {lo}, found {value}")
        elif not meta.get("min_exclusive") and value < lo:
            errors.append(f"{key}: expected a value >= {lo}, found {value}")
    if hi is not None and value > hi:
        errors.append(f"{key}: expected a value <= {hi}, found {value}")


def build(cls: type, data: Any, prefix: str, errors: list[str]) -> Any:
    """Build dataclass ``cls`` from mapping ``data``; unknown keys and bad values go to ``errors``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        errors.append(f"{prefix or '<root>'}: expected a mapping, found {_found(data)}")
        return cls()
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            errors.append(f"{dotted}: unknown key (allowed: {allowed})")
            continue
        before = len(errors)
        converted = convert(hints[key], value, dotted, errors)
        if len(errors) == before:
            _check_bounds(fields[key].metadata, converted, dotted, errors)
            kwargs[key] = converted
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """A dataclass tree back to plain dicts/lists (tuples become lists) for YAML output."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_scalar(text: str) -> Any:
    """Parse a ``--set`` value the way YAML would (``1`` -> int, ``true`` -> bool, ``null``)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text



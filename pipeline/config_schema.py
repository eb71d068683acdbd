"""Validate plain dicts (from YAML) against frozen dataclasses, collecting every problem.

A schema is an ordinary frozen dataclass; field types drive the checks and
``field(metadata=bounds(...))`` adds numeric ranges (applied to every number of a list or
mapping field too). Errors name the dotted key, what was expected and what was found, one
line each. Numbers must be finite, integers fit in 64 bits, strings hold no NUL and stay
under :data:`MAX_STR_CHARS`.

YAML goes through :func:`safe_load_limited`: a safe loader that also caps nesting depth,
alias uses and the size the aliases expand to, so a hostile file fails in milliseconds
instead of exhausting memory (the "billion laughs" bomb).
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

MAX_INT = 2**63 - 1
MAX_STR_CHARS = 4096
MAX_ITEMS = 10_000
MAX_YAML_BYTES = 1 << 20
MAX_YAML_DEPTH = 64
MAX_YAML_ALIASES = 256
MAX_YAML_NODES = 1_000_000


def bounds(
    min: float | None = None,  # noqa: A002 - mirrors the YAML vocabulary
    max: float | None = None,  # noqa: A002
    min_exclusive: bool = False,
    help: str = "",  # noqa: A002
) -> dict[str, Any]:
    """Field metadata: an inclusive (or exclusive-min) numeric range and a help line."""
    return {"min": min, "max": max, "min_exclusive": min_exclusive, "help": help}


# ---------------------------------------------------------------- short, safe previews of values
class _Preview(reprlib.Repr):
    """``reprlib`` with bounded depth and width that also survives huge ints and odd objects."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxtuple, self.maxdict = 3, 4, 4, 4
        self.maxstring, self.maxother, self.maxlong = 40, 40, 30

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 96:
            return f"<{int(x.bit_length() * math.log10(2)) + 1}-digit integer>"
        return super().repr_int(x, level)

    def repr1(self, x: Any, level: int) -> str:
        try:
            return super().repr1(x, level)
        except Exception:  # a hostile __repr__ must not hide the real error
            return f"<{type(x).__name__}>"


_PREVIEW = _Preview()


def _found(value: Any) -> str:
    text = _PREVIEW.repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def key_text(key: Any) -> str:
    """A mapping key as it appears in an error line: plain if short and printable, else a preview."""
    if isinstance(key, str) and key.isprintable() and 0 < len(key) <= 60:
        return key
    return _PREVIEW.repr(key)


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


# ---------------------------------------------------------------- conversion
def convert(tp: Any, value: Any, key: str, errors: list[str]) -> Any:
    """Convert ``value`` to ``tp``, appending ``"key: expected ..., found ..."`` on mismatch."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        first: list[str] = []
        for option in options:
            if option is type(None):
                continue
            trial: list[str] = []
            result = convert(option, value, key, trial)
            if not trial:
                return result
            first = first or trial
        # a value of the right kind but out of domain (nan, huge) keeps its precise message
        if any("finite" in e or "64-bit" in e or "NUL" in e or "characters" in e for e in first):
            errors.extend(first)
        else:
            errors.append(f"{key}: expected {_type_name(tp)}, found {_found(value)}")
        return None
    if origin is Literal:
        choices = get_args(tp)
        if isinstance(value, bool) or not any(type(value) is type(c) and value == c for c in choices):
            errors.append(f"{key}: expected {_type_name(tp)}, found {_found(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            errors.append(f"{key}: expected {_type_name(tp)}, found {_found(value)}")
            return None
        if len(value) > MAX_ITEMS:
            errors.append(f"{key}: expected at most {MAX_ITEMS} items, found {len(value)}")
            return None
        item_tp = get_args(tp)[0]
        return tuple(convert(item_tp, v, f"{key}[{i}]", errors) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{key}: expected {_type_name(tp)}, found {_found(value)}")
            return None
        if len(value) > MAX_ITEMS:
            errors.append(f"{key}: expected at most {MAX_ITEMS} entries, found {len(value)}")
            return None
        key_tp, val_tp = get_args(tp)
        out = {}
        for k, v in value.items():
            sub = f"{key}.{key_text(k)}"
            if get_origin(key_tp) is Literal:
                if k not in get_args(key_tp):
                    allowed = ", ".join(str(a) for a in get_args(key_tp))
                    errors.append(f"{sub}: unknown key (allowed: {allowed})")
                    continue
            elif not isinstance(k, str):
                errors.append(f"{sub}: expected a string key, found {_found(k)}")
                continue
            out[k] = convert(val_tp, v, sub, errors)
        return out
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key, errors)
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(f"{key}: expected a boolean (true/false), found {_found(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{key}: expected an integer, found {_found(value)}")
        elif abs(value) > MAX_INT:
            errors.append(f"{key}: expected an integer in the 64-bit range, found {_found(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{key}: expected a number, found {_found(value)}")
            return value
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            errors.append(f"{key}: expected a finite number, found {_found(value)}")
        return number
    if tp is str:
        if not isinstance(value, str):
            errors.append(f"{key}: expected a string, found {_found(value)}")
        elif len(value) > MAX_STR_CHARS:
            errors.append(f"{key}: expected at most {MAX_STR_CHARS} characters, found {len(value)}")
        elif "\x00" in value:
            errors.append(f"{key}: expected a string without NUL characters, found {_found(value)}")
        return value
    return value


def _numbers(value: Any, key: str) -> list[tuple[str, float]]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [(key, value)]
    if isinstance(value, tuple):
        return [(f"{key}[{i}]", v) for i, v in enumerate(value) if isinstance(v, (int, float))]
    if isinstance(value, dict):
        return [(f"{key}.{key_text(k)}", v) for k, v in value.items() if isinstance(v, (int, float))]
    return []


def _check_bounds(meta: Any, value: Any, key: str, errors: list[str]) -> None:
    lo, hi = meta.get("min"), meta.get("max")
    for name, v in _numbers(value, key):
        if isinstance(v, bool):
            continue
        if lo is not None:
            if meta.get("min_exclusive") and not v > lo:
                errors.append(f"{name}: expected a value > {lo}, found {v}")
            elif not meta.get("min_exclusive") and v < lo:
                errors.append(f"{name}: expected a value >= {lo}, found {v}")
        if hi is not None and v > hi:
            errors.append(f"{name}: expected a value <= {hi}, found {v}")


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
        dotted = f"{prefix}.{key_text(key)}" if prefix else key_text(key)
        if not isinstance(key, str) or key not in fields:
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


# ---------------------------------------------------------------- YAML with limits
class YamlLimitError(yaml.YAMLError):
    """A YAML document exceeds a cap (depth, aliases, expanded size); the message says which."""


class _LimitedLoader(yaml.SafeLoader):
    """``SafeLoader`` that stops at :data:`MAX_YAML_DEPTH` nesting and :data:`MAX_YAML_ALIASES` aliases."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise YamlLimitError(
                    f"more than {MAX_YAML_ALIASES} aliases (*name), line {event.start_mark.line + 1}; "
                    "write the values out instead"
                )
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise YamlLimitError(
                    f"nested deeper than {MAX_YAML_DEPTH} levels, line {event.start_mark.line + 1}"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _expanded_size(root: yaml.Node) -> int:
    """Nodes the document expands to once every alias is copied out (iterative, memoized)."""
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    active: set[int] = set()
    while stack:
        node, done = stack.pop()
        if done:
            active.discard(id(node))
            total = 1 + sum(size[id(c)] for c in _children(node))
            if total > MAX_YAML_NODES:
                raise YamlLimitError(
                    f"aliases expand to more than {MAX_YAML_NODES:,} values "
                    f"(anchor at line {node.start_mark.line + 1}); write the values out instead"
                )
            size[id(node)] = total
            continue
        if id(node) in size:
            continue
        if id(node) in active:
            raise YamlLimitError(f"recursive alias at line {node.start_mark.line + 1}")
        active.add(id(node))
        stack.append((node, True))
        for child in _children(node):
            if id(child) not in size:
                if id(child) in active:
                    raise YamlLimitError(f"recursive alias at line {child.start_mark.line + 1}")
                stack.append((child, False))
    return size[id(root)]


def safe_load_limited(text: str) -> Any:
    """``yaml.safe_load`` with caps on depth, aliases and expanded size.

    Raises:
        yaml.YAMLError: malformed YAML, or :class:`YamlLimitError` when a cap is exceeded.
        ValueError: an integer literal too long for Python to convert.
    """
    loader = _LimitedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def parse_scalar(text: str) -> Any:
    """Parse a ``--set`` value the way YAML would (``1`` -> int, ``true`` -> bool, ``null``).

    Text that is not valid (or too hostile) YAML stays a string; the schema then says what it
    expected instead.
    """
    if len(text) > MAX_STR_CHARS:
        return text
    try:
        return safe_load_limited(text)
    except (yaml.YAMLError, ValueError, RecursionError):
        return text

"""Map a YAML mapping onto a config dataclass, checking every key and every value's type.

Why: a typo in a pipeline file used to be dropped silently (``generate: {temprature: 0}``) or to
fail with a ``TypeError`` an hour later, after generation and training had run. Every section of
a pipeline file (and ``edge-kto train --config``) goes through :func:`from_mapping` when the file
loads, so a wrong key or type stops the run before any work, naming ``file: section: key``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Iterable, TypeVar, Union

from edge_kto_runtime.errors import InvalidInput

T = TypeVar("T")

# Field metadata of an option added after run folders exist: while it holds its default it is left
# out of a pipeline stage's cache key (edge_kto.pipeline.runner.key_material), so adding the option
# keeps every stage cached before it existed.
KEY_OMITS_DEFAULT = {"key": "omitted at default"}


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if isinstance(tp, type):
        return {
            "str": "a string",
            "int": "an integer",
            "float": "a number",
            "bool": "true/false",
            "list": "a list",
            "dict": "a mapping",
        }.get(tp.__name__, f"a {tp.__name__} mapping")
    return str(tp).replace("typing.", "")


def _matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` (from YAML/JSON) fits the annotation ``tp``. Nested dataclasses: a mapping."""
    if tp is Any or tp is object:
        return True
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if dataclasses.is_dataclass(tp):
        return isinstance(value, (dict, tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return isinstance(value, (list, tuple)) and (not args or all(_matches(v, args[0]) for v in value))
    if origin is dict or tp is dict:
        args = typing.get_args(tp)
        return isinstance(value, dict) and (not args or all(_matches(v, args[1]) for v in value.values()))
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _unknown_key(where: str, key: str, known: Iterable[str]) -> InvalidInput:
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return InvalidInput(f"{where}: unknown key(s) [{key!r}]{hint}; known: {', '.join(known)}")


def from_mapping(cls: type[T], data: Any, where: str, fixed: dict[str, Any] | None = None) -> T:
    """``cls(**data)`` after checking every key and value; nested dataclass fields recurse.

    ``where`` prefixes every message (``"pipeline.yaml: generate"``). ``fixed``: fields the caller
    sets itself (a stage's input and output paths): refused in ``data``, filled with these values.
    The dataclass's ``validate()`` runs on the result, its message prefixed with ``where``.
    """
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise InvalidInput(f"{where}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
    fixed = fixed or {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    settable = set(fields) - set(fixed)
    kwargs: dict[str, Any] = dict(fixed)
    for key, value in data.items():
        if key not in settable:
            if key in fixed:
                raise InvalidInput(f"{where}: {key}: set by the pipeline, not by this file")
            raise _unknown_key(where, str(key), settable)
        tp = hints[key]
        if not _matches(value, tp):
            raise InvalidInput(f"{where}: {key}: expected {_type_name(tp)}, got {value!r}")
        inner = _dataclass_in(tp)
        if inner is not None and isinstance(value, dict):
            value = from_mapping(inner, value, f"{where}: {key}")
        kwargs[key] = value
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field left out
        raise InvalidInput(f"{where}: {e}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except InvalidInput as e:
            raise InvalidInput(f"{where}: {e}") from None
    return obj


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass inside ``X``, ``X | None``; None when the annotation holds none."""
    if dataclasses.is_dataclass(tp):
        return tp
    for a in typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else ():
        if dataclasses.is_dataclass(a):
            return a
    return None


def to_mapping(obj: Any, drop: Iterable[str] = ()) -> dict[str, Any]:
    """The fields of a config dataclass as plain data (a cache key's input), minus ``drop``."""
    d = dataclasses.asdict(obj)
    for k in drop:
        d.pop(k, None)
    return d

"""Command-line flags generated from a stage's Config dataclass, so a field cannot be missing from
the CLI: every scalar field becomes ``--field-name`` (booleans get ``--x`` / ``--no-x``); fields
holding lists, mappings or nested configs come from ``--config FILE`` (YAML of the same fields).

Every generated flag defaults to None: only what the user typed overrides the Config's own
default (the one source of each default) or the ``--config`` file.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Iterable, Union


def _scalar(tp: Any) -> type | None:
    """int / float / str / bool, also inside ``X | None``; None for anything else."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _scalar(args[0]) if len(args) == 1 else None
    return tp if tp in (int, float, str, bool) else None


def flag_fields(cls: type) -> dict[str, type]:
    """The fields of ``cls`` a flag can carry: name -> scalar type."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        t = _scalar(hints[f.name])
        if t is not None:
            out[f.name] = t
    return out


def add_config_flags(
    p: argparse.ArgumentParser, cls: type, skip: Iterable[str] = (), helps: dict[str, str] | None = None
) -> list[str]:
    """``--field`` for every scalar field of ``cls`` not in ``skip`` nor already a flag; returns the names."""
    helps = helps or {}
    have = {a.dest for a in p._actions}
    added = []
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for name, typ in flag_fields(cls).items():
        if name in skip or name in have:
            continue
        flag = "--" + name.replace("_", "-")
        d = defaults.get(name, dataclasses.MISSING)
        h = helps.get(name, f"{cls.__name__}.{name}") + ("" if d is dataclasses.MISSING else f" (default: {d})")
        if typ is bool:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=h)
        else:
            p.add_argument(flag, dest=name, type=typ, default=None, help=h)
        added.append(name)
    return added


def given_flags(a: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The flags the user actually gave (not None)."""
    return {n: getattr(a, n) for n in names if getattr(a, n, None) is not None}

"""``"package.module:name"`` -> the object: the one way every registry imports what it names.

Registries (runtime backends, teachers, verifiers) map a short name to such a string, so an entry
costs nothing until it is used and a heavy dependency (torch, llama.cpp) is imported only by the
code path that needs it. A user's own implementation plugs in with the same string.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import InvalidInput


def import_target(spec: str, what: str = "plugin") -> Any:
    """Import ``module:attribute``; a bad string or a missing name is the user's input error."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise InvalidInput(f"{what} {spec!r}: expected 'package.module:name'")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise InvalidInput(f"cannot import {what} {spec!r}: {e}") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise InvalidInput(f"cannot import {what} {spec!r}: {e}") from e
    return obj

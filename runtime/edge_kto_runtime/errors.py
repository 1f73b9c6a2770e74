"""One error taxonomy and one command-line runner for ``edge-kto`` and ``edge-runtime``.

Why: the exit code is the contract a script or CI job reads. Each class says who must act:

====================  =====  =====================================================
class                 exit   meaning
====================  =====  =====================================================
``UserError``         2      bad input: a file, flag, config key or data row; fix it
``ToolError``         1      an external tool or service failed (llama.cpp, HTTP)
``GateFailed``        3      the alignment gate ran and an artifact failed it
anything else         —      a bug: Python's traceback, so it can be reported
``KeyboardInterrupt`` 130    Ctrl-C
====================  =====  =====================================================

The concrete user errors keep a builtin base (``InvalidInput`` is a ``ValueError``,
``MissingInput`` a ``FileNotFoundError``) so ``except ValueError`` in callers still works; but a
*plain* ``ValueError`` raised by a bug is no longer dressed up as the user's mistake.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence


class EdgeError(Exception):
    """Base of every error the CLIs report in one line (no traceback)."""

    exit_code = 1


class UserError(EdgeError):
    """The input is wrong (file, flag, config key, data row): the message names it."""

    exit_code = 2


class InvalidInput(UserError, ValueError):
    """A value is wrong: a config key, a flag, a data row, a bundle's content."""


class MissingInput(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class InputExists(UserError, FileExistsError):
    """The output already exists and replacing it was not asked for."""


class MissingDependency(UserError, ImportError):
    """An optional package is not installed; the message says which ``pip install`` fixes it."""


class ToolError(EdgeError, RuntimeError):
    """An external tool or service failed (llama.cpp, onnxruntime-genai builder, an HTTP endpoint)."""

    exit_code = 1


class GateFailed(EdgeError):
    """The alignment gate ran to completion and at least one artifact failed it."""

    exit_code = 3


#: OS errors about a path the user gave (``open("typo.jsonl")``): input, not bugs.
_USER_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def exit_code_for(e: BaseException) -> int | None:
    """The exit code for an error the CLIs report in one line, or None for a bug (traceback)."""
    if isinstance(e, EdgeError):
        return e.exit_code
    if isinstance(e, _USER_OS_ERRORS) and getattr(e, "filename", None):
        return 2
    return None


def add_common_flags(p: argparse.ArgumentParser, version: str) -> None:
    """``--version`` on the program; ``--quiet`` and ``--verbose`` on every (sub)command that lacks them.

    They go on the leaf parsers (``edge-kto run --quiet``), since argparse lets a subcommand's
    defaults overwrite flags given before it.
    """
    p.add_argument("--version", action="version", version=version)

    def walk(parser: argparse.ArgumentParser) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            have = {o for a in parser._actions for o in a.option_strings}
            if "--quiet" not in have:
                parser.add_argument("--quiet", action="store_true", help="only errors and final results")
            if "--verbose" not in have:
                parser.add_argument("--verbose", action="store_true", help="debug logging")
        for s in subs:
            for child in dict.fromkeys(s.choices.values()):
                walk(child)

    walk(p)


def run_cli(
    prog: str,
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    dispatch: Callable[[argparse.Namespace], int],
) -> int:
    """Parse, run ``dispatch(args)``, and map what it raises onto the exit codes above."""
    args = parser.parse_args(argv)
    quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO, format=f"{prog}: %(message)s"
    )
    try:
        return int(dispatch(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - sorted into user/tool/gate errors; the rest re-raised
        code = exit_code_for(e)
        if code is None:
            raise
        kind = {2: "error", 1: "failed", 3: "gate failed"}.get(code, "error")
        print(f"{prog}: {kind}: {e}", file=sys.stderr)
        return code

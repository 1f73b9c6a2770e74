"""``edge-runtime``: the device-side command line."""

from __future__ import annotations

import argparse
import sys

from . import SCHEMA_VERSION, __version__


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge-runtime", description="Run edge-kto bundles offline (no torch).")
    p.add_argument("--version", action="version", version=f"edge-kto-runtime {__version__} (bundle schema {SCHEMA_VERSION})")
    p.parse_args(argv)
    p.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Lint and format check (CI runs it): ruff, line length 120, config in pyproject.toml.
# `scripts/lint.sh --fix` rewrites the tree instead of checking it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RUFF="${RUFF:-$ROOT/.venv/bin/ruff}"
[ -x "$RUFF" ] || RUFF=ruff
if [ "${1:-}" = "--fix" ]; then
  "$RUFF" check --fix .
  "$RUFF" format .
else
  "$RUFF" check .
  "$RUFF" format --check .
fi

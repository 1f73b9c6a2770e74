#!/usr/bin/env bash
# The test command (README): installs what is missing, then runs the whole suite, real-model
# tests included. `--fast`: the unit tier only (the edit loop; no model, no artifact build).
# Other arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$ROOT/scripts/setup.sh"
cd "$ROOT"
ARGS=()
for a in "$@"; do
  if [ "$a" = "--fast" ]; then ARGS+=(-m unit); else ARGS+=("$a"); fi
done
set +e
python -m pytest ${ARGS[@]+"${ARGS[@]}"}
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as failure" >&2
  exit 1
fi
exit "$rc"

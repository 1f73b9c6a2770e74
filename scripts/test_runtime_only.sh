#!/usr/bin/env bash
# The runtime on its own, as a phone or board installs it: a fresh venv with edge-kto-runtime and
# its backends only (no torch, transformers or peft), running the runtime tests against bundles
# built beforehand by the full install (scripts/make_test_bundles.py).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUNDLES="${1:?usage: test_runtime_only.sh BUNDLES_DIR}"
VENV="${EDGE_KTO_RUNTIME_VENV:-$ROOT/.venv-runtime}"
export CMAKE_ARGS="${CMAKE_ARGS:--DCMAKE_C_FLAGS=-U__AMX_INT8__ -DCMAKE_CXX_FLAGS=-U__AMX_INT8__}"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "$ROOT/runtime[llamacpp,onnx,test]"
if "$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -c "import transformers" 2>/dev/null; then
  echo "runtime-only venv must not contain torch or transformers" >&2
  exit 1
fi
cd "$ROOT"
set +e
EDGE_KTO_TEST_BUNDLE="$BUNDLES/tiny" EDGE_KTO_TEST_SMOL_BUNDLE="$BUNDLES/smol" \
  "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_runtime_imports.py tests/test_runtime_model.py \
  tests/test_runtime_server.py tests/test_runtime_bench.py tests/test_shared_fixtures.py \
  tests/hostile/test_hostile_http.py tests/hostile/test_hostile_bundles.py
rc=$?
set -e
[ "$rc" -eq 5 ] && { echo "runtime tests: nothing collected" >&2; exit 1; }
exit "$rc"

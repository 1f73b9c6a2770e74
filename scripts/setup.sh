#!/usr/bin/env bash
# Create .venv and install edge-kto (+ runtime, dev and export extras). Idempotent: a second
# run only checks. Sourced by test.sh and demo.sh; safe to run on its own.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EDGE_KTO_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

# llama.cpp's AMX int8 kernels crash on Q4_0/Q4_1 weights (ggml-org/llama.cpp#20824, #16315);
# -march=native turns them on for CPUs that report AMX (this machine does). Undefining the
# macro keeps every other native kernel. Only used when pip builds llama-cpp-python from source;
# pip caches the built wheel, so this costs ~7.5 min once per machine.
export CMAKE_ARGS="${CMAKE_ARGS:--DCMAKE_C_FLAGS=-U__AMX_INT8__ -DCMAKE_CXX_FLAGS=-U__AMX_INT8__}"

STAMP="$VENV/.edge-kto-installed"
REQ_HASH="$(cat "$ROOT/pyproject.toml" "$ROOT/runtime/pyproject.toml" | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$REQ_HASH" ]; then
  python -m pip install -q --upgrade pip
  # torch first and pinned: the CPU build lies on disk; anything looser pulls a multi-GB CUDA build.
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e "$ROOT/runtime[llamacpp,onnx,test]" -e "$ROOT[dev,export]"
  echo "$REQ_HASH" > "$STAMP"
fi
# llama.cpp's GGUF converter, matched to the installed llama.cpp (from its sdist; once per machine,
# needs PyPI; afterwards `edge-kto export` runs offline).
edge-kto export --prepare --quiet >/dev/null

#!/usr/bin/env bash
# Print the folder holding llama.cpp's source at the commit the installed llama-cpp-python vendors
# (from its sdist on PyPI, downloaded once into $EDGE_KTO_CACHE/llama.cpp-src/<version>/).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
CACHE="${EDGE_KTO_CACHE:-$HOME/.cache/edge-kto}"
VER="$("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)')"
SRC="$CACHE/llama.cpp-src/$VER"
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  TMP="$(mktemp -d)"
  "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VER" -d "$TMP" >&2
  tar -xzf "$TMP"/llama_cpp_python-*.tar.gz -C "$TMP"
  mkdir -p "$(dirname "$SRC")" && rm -rf "$SRC.tmp" && mv "$TMP"/llama_cpp_python-*/vendor/llama.cpp "$SRC.tmp"
  mv "$SRC.tmp" "$SRC" && rm -rf "$TMP"
fi
echo "$SRC"

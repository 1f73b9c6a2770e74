#!/usr/bin/env bash
# Cross-compile the device side's llama.cpp path for aarch64 Linux on this x86 machine:
#   - llama.cpp at the commit llama-cpp-python vendors (the one the export's converter and quantizer use),
#   - the app's JNI bridge (android_demo/llama/src/main/cpp/edge_llama.cpp) against it,
#   - edge_check (android_demo/llama/src/main/cpp/edge_check.cpp): bundle verification + the golden re-check.
# Two CPU baselines: armv8.2-a+dotprod (phones since ~2019, Pi 5) and armv8-a (older boards, Pi 3/4).
#   scripts/aarch64/build.sh [OUT]          (default: $EDGE_KTO_CACHE/aarch64/<llama-cpp-python version>)
# Needs Debian's gcc/g++-aarch64-linux-gnu and cmake (installed here if missing, with sudo when not root).
# Cached: the llama.cpp source and each finished build (a rerun with the same version is ~1 s).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
CACHE="${EDGE_KTO_CACHE:-$HOME/.cache/edge-kto}"
VER="$("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)')"
OUT="${1:-$CACHE/aarch64/$VER}"
JOBS="${JOBS:-$(nproc)}"

if ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v cmake >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q \
    gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user cmake
fi

SRC="$("$HERE/llama_src.sh")"  # llama.cpp source of the installed llama-cpp-python (cached)

CPP="$ROOT/android_demo/llama/src/main/cpp"
JAVA_INC=""
if command -v javac >/dev/null; then
  JAVA_HOME="${JAVA_HOME:-$(dirname "$(dirname "$(readlink -f "$(command -v javac)")")")}"
  JAVA_INC="$JAVA_HOME/include"
fi
STAMP="$(cat "$CPP/CMakeLists.txt" "$CPP"/*.cpp "$0" | sha256sum | cut -c1-16)"
for ARCH in armv8.2-a+dotprod armv8-a; do
  B="$OUT/$ARCH"
  if [ -f "$B/stamp" ] && [ "$(cat "$B/stamp")" = "$STAMP" ]; then
    echo "aarch64 $ARCH: cached ($B)"
    continue
  fi
  rm -rf "$B" && mkdir -p "$B"
  t0=$(date +%s)
  cmake -S "$CPP" -B "$B/build" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
    -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ \
    -DLLAMA_CPP_DIR="$SRC" -DGGML_CPU_ARM_ARCH="$ARCH" -DEDGE_CHECK=ON \
    ${JAVA_INC:+-DJNI_INCLUDE="$JAVA_INC"} > "$B/cmake.log"
  if ! cmake --build "$B/build" -j "$JOBS" > "$B/build.log" 2>&1; then
    grep -m 20 -E "error|Error" "$B/build.log" >&2 || tail -20 "$B/build.log" >&2
    echo "aarch64 $ARCH: build failed (log: $B/build.log)" >&2
    exit 1
  fi
  cp "$B/build/edge_check" "$B/"
  [ -f "$B/build/libedgekto_llama.so" ] && cp "$B/build/libedgekto_llama.so" "$B/"
  echo "$STAMP" > "$B/stamp"
  echo "aarch64 $ARCH: built in $(( $(date +%s) - t0 )) s ($B)"
done

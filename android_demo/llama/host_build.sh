#!/usr/bin/env bash
# Build the app's JNI bridge (src/main/cpp/edge_llama.cpp) for this machine against the libllama
# that llama-cpp-python ships (the llama.cpp commit the export uses), plus the Java classes of
# core/ and llama/ and the host tests, into android_demo/llama/build/host.
#   android_demo/llama/host_build.sh
# Needs: the project venv (.venv, scripts/setup.sh), g++, a JDK, Debian's junit4.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
JUNIT="${JUNIT_JAR:-/usr/share/java/junit4.jar}"
OUT="$HERE/build/host"
rm -rf "$OUT" && mkdir -p "$OUT/classes" "$OUT/test-classes"

# llama.h + ggml headers of the installed llama-cpp-python version, from its sdist (cached).
VER="$("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)')"
LIBDIR="$("$PY" -c 'import llama_cpp, os; print(os.path.join(os.path.dirname(llama_cpp.__file__), "lib"))')"
INC="${EDGE_KTO_CACHE:-$HOME/.cache/edge-kto}/llama.cpp-headers/$VER"
if [ ! -f "$INC/llama.h" ]; then
  TMP="$(mktemp -d)"
  "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VER" -d "$TMP"
  mkdir -p "$INC.tmp"
  tar -xzf "$TMP"/llama_cpp_python-*.tar.gz -C "$TMP" --wildcards '*/vendor/llama.cpp/include/*' '*/vendor/llama.cpp/ggml/include/*'
  cp "$TMP"/llama_cpp_python-*/vendor/llama.cpp/include/*.h "$TMP"/llama_cpp_python-*/vendor/llama.cpp/ggml/include/*.h "$INC.tmp/"
  rm -rf "$INC" && mv "$INC.tmp" "$INC" && rm -rf "$TMP"
fi
JAVA_HOME="${JAVA_HOME:-$(dirname "$(dirname "$(readlink -f "$(command -v javac)")")")}"
g++ -std=c++17 -O2 -Wall -Wextra -Werror -shared -fPIC -I"$INC" -I"$JAVA_HOME/include" -I"$JAVA_HOME/include/linux" \
  "$HERE/src/main/cpp/edge_llama.cpp" -L"$LIBDIR" -lllama -Wl,-rpath,"$LIBDIR" -o "$OUT/libedgekto_llama.so"

CORE="$HERE/../core/src/main/java"
javac -Xlint:all -Werror --release 17 -d "$OUT/classes" $(find "$CORE" "$HERE/src/main/java" -name '*.java')
javac --release 17 -cp "$OUT/classes:$JUNIT" -d "$OUT/test-classes" $(find "$HERE/src/hostTest/java" -name '*.java')

#!/usr/bin/env bash
# Build the host-testable core (plain Java 17, no Android) and run its JUnit 4 tests against the
# shared fixtures in tests/fixtures. Needs a JDK and Debian's junit4 (apt install default-jdk-headless junit4).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
JUNIT="${JUNIT_JAR:-/usr/share/java/junit4.jar}"
HAMCREST="${HAMCREST_JAR:-/usr/share/java/hamcrest-core.jar}"
for j in "$JUNIT" "$HAMCREST"; do
  [ -f "$j" ] || { echo "missing $j: apt install junit4 (or set JUNIT_JAR / HAMCREST_JAR)" >&2; exit 1; }
done
OUT="$HERE/build"
rm -rf "$OUT" && mkdir -p "$OUT/main" "$OUT/test"
javac -Xlint:all -Werror --release 17 -d "$OUT/main" $(find "$HERE/src/main/java" -name '*.java')
javac --release 17 -cp "$OUT/main:$JUNIT" -d "$OUT/test" $(find "$HERE/src/test/java" -name '*.java')
java -Dfixtures="$ROOT/tests/fixtures" -cp "$OUT/main:$OUT/test:$JUNIT:$HAMCREST" org.junit.runner.JUnitCore dev.edgekto.core.CoreTest dev.edgekto.core.ChatAndStreamTest dev.edgekto.core.ZipAndSchemaTest

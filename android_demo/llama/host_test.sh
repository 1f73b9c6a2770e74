#!/usr/bin/env bash
# Run LlamaHostTest (the app's llama.cpp path: JNI bridge + LlamaChat + LatencyBench) on a real
# bundle: prompt ids vs the bundle's golden ids, greedy tokens vs the Python runtime on the same
# GGUF, UTF-8 streaming, stop, prefix reuse, fixed-length latency runs, bad input.
#   android_demo/llama/host_test.sh BUNDLE_DIR     (a bundle with a GGUF artifact and golden.jsonl)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BUNDLE="$(cd "${1:?usage: host_test.sh BUNDLE_DIR}" && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
JUNIT="${JUNIT_JAR:-/usr/share/java/junit4.jar}"
HAMCREST="${HAMCREST_JAR:-/usr/share/java/hamcrest-core.jar}"
OUT="$HERE/build/host"
"$HERE/host_build.sh"

# What the Python runtime generates on the same artifact (the reference the JNI path must equal).
"$PY" - "$BUNDLE" "$OUT/expected.json" <<'PY'
import json, sys
from edge_kto_runtime import load, open_bundle
bundle, out = sys.argv[1], sys.argv[2]
gguf = next(a.path for a in open_bundle(bundle, verify=False).artifacts if a.backend == "llama.cpp")
rows = [json.loads(l) for l in open(f"{bundle}/golden.jsonl", encoding="utf-8") if l.strip()]
with load(bundle, artifact=gguf, n_threads=2, verify=False) as m:
    cases = []
    for r in rows:  # from an empty KV cache: a reused prefix computed in another batch split rounds differently
        m.backend.reset()
        cases.append({"id": r["id"], "messages": r["messages"], "prompt_ids": m.encode(r["messages"]),
                      "greedy_ids": m.complete(r["messages"], max_new_tokens=16, temperature=0.0).token_ids})
json.dump({"artifact": gguf, "cases": cases}, open(out, "w", encoding="utf-8"), ensure_ascii=False)
PY

java -Djava.library.path="$OUT" -Dbundle="$BUNDLE" -Dexpected="$OUT/expected.json" \
  -cp "$OUT/classes:$OUT/test-classes:$JUNIT:$HAMCREST" org.junit.runner.JUnitCore dev.edgekto.llama.LlamaHostTest

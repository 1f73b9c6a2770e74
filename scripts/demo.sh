#!/usr/bin/env bash
# The main job (README): `edge-kto run` on the shipped BrightNest support task — teacher
# generation (with the knowledge text, which the student never sees) -> labels (verifier + the
# student's own samples) -> KTO training -> export (GGUF + ONNX int4) + alignment gate ->
# task accuracy -> P99 latency -> report (runs/<name>/report.md). Stages are cached: rerunning
# after a kill or a config change redoes only what changed.
#   ./scripts/demo.sh            edge_kto/pipelines/demo.yaml: Qwen2.5-Coder-1.5B teacher, SmolLM2-135M student
#   ./scripts/demo.sh --quick    edge_kto/pipelines/quick.yaml: SmolLM2 teacher, a tiny random student, 12 prompts
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$ROOT/scripts/setup.sh"
cd "$ROOT"

edge-kto models fetch smollm2-135m-instruct
if [ "${1:-}" = "--quick" ]; then
  OUT="${EDGE_KTO_DEMO_OUT:-$ROOT/runs/quick}"
  mkdir -p "$OUT"
  STUDENT="$OUT/tiny-student"
  [ -f "$STUDENT/config.json" ] || python - "$STUDENT" <<'PY'
import sys
from transformers import AutoTokenizer
from edge_kto.models import fetch_model, make_tiny_llama
make_tiny_llama(sys.argv[1], AutoTokenizer.from_pretrained(fetch_model("smollm2-135m-instruct", progress=False).hf_dir))
PY
  edge-kto run edge_kto/pipelines/quick.yaml --out "$OUT" --student "$STUDENT"
else
  edge-kto models fetch qwen2.5-coder-1.5b-instruct
  edge-kto run edge_kto/pipelines/demo.yaml --out "${EDGE_KTO_DEMO_OUT:-$ROOT/runs/demo}"
fi

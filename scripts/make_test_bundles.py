"""Build the bundles the runtime tests use, so they can run in a venv without torch (CI).

python scripts/make_test_bundles.py OUT_DIR     # writes OUT_DIR/tiny and OUT_DIR/smol
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import build_smol_bundle, build_tiny_bundle  # noqa: E402


def main() -> None:
    from transformers import AutoTokenizer

    from edge_kto.models import fetch_model, make_tiny_llama

    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    smol = fetch_model("smollm2-135m-instruct", progress=False)
    tiny = make_tiny_llama(out / "tiny-model", AutoTokenizer.from_pretrained(smol.hf_dir))
    for name, build, src in (("tiny", build_tiny_bundle, tiny), ("smol", build_smol_bundle, smol.hf_dir)):
        if not (out / name / "manifest.json").exists():
            build(out / name, src)
        print(out / name)


if __name__ == "__main__":
    main()

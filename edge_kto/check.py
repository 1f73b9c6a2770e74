"""Stage 5: the alignment gate, server side — fp reference (transformers) vs every artifact of a bundle.

The metrics are the runtime's (:mod:`edge_kto_runtime.check`), so a device re-running the check
computes the same quantities; here the fp side comes from the full reference model, so the KL
is exact rather than the device's top-k bound. Results go into ``manifest.json`` (``alignment``)
and ``alignment.md``; any failing artifact makes the check fail.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_kto_runtime import load, open_bundle
from edge_kto_runtime.check import Thresholds, check_artifact, markdown_table, read_golden
from edge_kto_runtime.errors import InvalidInput
from edge_kto_runtime.verifiers import get_verifier

from .jsonl import write_atomic, write_json_atomic
from .run_folder import fp_model_dir


@dataclass
class CheckConfig:
    bundle: str
    reference: str | None = None  # run folder or HF model folder; default: the run recorded in the manifest
    # the fp folder the artifacts were made from when it is not the reference (a finished student);
    # default: the finish folder recorded in the manifest. Only used when the golden set says so.
    exported: str | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    artifacts: list[str] | None = None  # default: all
    verifier: str | None = None  # default: the golden set's task verifier
    threads: int | None = None
    write: bool = True  # update manifest.json and write alignment.md
    verify: bool = True  # hash every file first; export passes False for a bundle it just verified


@dataclass
class CheckResult:
    results: list[dict[str, Any]]
    passed: bool
    report_path: Path | None
    seconds: float


def _reference_dir(cfg: CheckConfig, manifest: dict[str, Any]) -> Path:
    ref = cfg.reference or (manifest.get("training") or {}).get("run") or manifest.get("base_model")
    if not ref:
        raise InvalidInput(f"{cfg.bundle}: no --reference given and the manifest names no training run")
    local = fp_model_dir(ref)
    if local is not None:
        return local
    from .models.loader import resolve_spec

    kind, loc = resolve_spec(ref)
    if kind != "hf_dir":
        raise InvalidInput(f"{ref}: the reference must be a run folder or a transformers model folder")
    return Path(loc)


def _exported_dir(cfg: CheckConfig, manifest: dict[str, Any]) -> Path | None:
    """The finished model's fp folder when the golden set takes it as the KL reference; None when the
    golden set does not, or the folder is not on this machine (then its stored top-k is used)."""
    if manifest["golden"].get("kl_reference") != "finished":
        return None
    src = cfg.exported or ((manifest.get("training") or {}).get("finish") or {}).get("dir")
    return fp_model_dir(src, need_weights=True) if src else None


def fp_logprobs_fn(model_dir: Path):
    """(ids, positions) -> full fp32 log-prob rows, the LM head applied only at ``positions``.

    ``fn.prefetch(requests)`` computes many requests in right-padded batches first (one forward per
    batch instead of per row: the check scores the same golden rows for every artifact, so they are
    known up front); later calls are served from the cache."""
    import torch
    from transformers import AutoModelForCausalLM

    from .train.logps import causal_lm_parts

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    backbone, head = causal_lm_parts(model)

    cache: dict[tuple, np.ndarray] = {}  # the same golden rows are scored for every artifact

    @torch.no_grad()
    def forward(batch: list[tuple[list[int], list[int]]]) -> None:
        width = max(len(ids) for ids, _ in batch)
        x = torch.zeros((len(batch), width), dtype=torch.long)
        att = torch.zeros_like(x)
        for i, (ids, _) in enumerate(batch):
            x[i, : len(ids)], att[i, : len(ids)] = torch.tensor(ids), 1
        hidden = backbone(input_ids=x, attention_mask=att, use_cache=False).last_hidden_state
        for i, (ids, positions) in enumerate(batch):
            cache[(tuple(ids), tuple(positions))] = torch.log_softmax(head(hidden[i, positions]).double(), -1).numpy()

    def fn(ids: list[int], positions: list[int]) -> np.ndarray:
        key = (tuple(ids), tuple(positions))
        if key not in cache:
            forward([(ids, positions)])
        return cache[key]

    def prefetch(requests: list[tuple[list[int], list[int]]], batch_size: int = 16) -> None:
        todo = sorted((r for r in requests if (tuple(r[0]), tuple(r[1])) not in cache), key=lambda r: len(r[0]))
        for s in range(0, len(todo), batch_size):
            forward(todo[s : s + batch_size])

    fn.prefetch = prefetch  # type: ignore[attr-defined]
    return fn


def run_check(cfg: CheckConfig, progress: bool = True) -> CheckResult:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    b = open_bundle(cfg.bundle, verify=cfg.verify)
    m = b.manifest
    if "golden" not in m:
        raise InvalidInput(f"{b.root}: the bundle has no golden set; export it with --golden-data")
    golden = read_golden(b.file(m["golden"]["path"]))
    spec = cfg.verifier or m["golden"].get("verifier")
    verifier = get_verifier(spec) if spec else None
    fp = fp_logprobs_fn(_reference_dir(cfg, m))
    exported_dir = _exported_dir(cfg, m)
    exported = fp_logprobs_fn(exported_dir) if exported_dir is not None else None
    detail = [  # the rows check_artifact takes log-probs of, at the positions it asks for
        (p + g, list(range(len(p) - 1, len(p) + len(g) - 1)))
        for p, g, has_top in ((r["prompt_ids"], r["greedy_ids"], "top_logprobs" in r) for r in golden)
        if g and has_top
    ]
    for f in (fp, exported):
        if f is not None:
            f.prefetch(detail)
    th = Thresholds.from_dict(cfg.thresholds)
    results = []
    arts = [
        a for a in b.artifacts if not cfg.artifacts or a.path in cfg.artifacts or a.path.rstrip("/") in cfg.artifacts
    ]
    for art in tqdm(arts, desc="alignment check", unit="artifact", disable=not progress):
        with load(b.root, artifact=art.path, n_threads=cfg.threads, verify=False) as model:
            results.append(check_artifact(model, golden, verifier, fp, th, m["golden"].get("max_new_tokens"), exported))
    passed = all(r["passed"] for r in results)
    report = None
    if cfg.write:
        report = b.root / "alignment.md"
        write_atomic(
            report,
            f"# Alignment check: {m.get('name')}\n\nfp reference vs each artifact on {len(golden)} "
            f"golden prompts{_split_note(golden)} (KL exact, from the full fp distribution).{_finished_note(m)}\n\n"
            + markdown_table(results),
        )
        m["alignment"] = {
            "reference": "fp32 (transformers)",
            "kl_reference": m["golden"].get("kl_reference", "student"),
            "golden_rows": len(golden),
            "verifier": spec,
            "thresholds": th.__dict__,
            "passed": passed,
            "per_artifact": {
                r["artifact"]: {k: v for k, v in r.items() if k not in ("thresholds", "rows")} for r in results
            },
        }
        write_json_atomic(b.root / "manifest.json", m)
    return CheckResult(results, passed, report, time.perf_counter() - t0)


def _finished_note(manifest: dict[str, Any]) -> str:
    if manifest["golden"].get("kl_reference") != "finished":
        return ""
    return (
        " The artifacts store a *finished* student (trained through the 4-bit grid): KLD and top-1 compare "
        "each artifact with those finished fp weights (what export and runtime change); KLD vs fp student "
        "is how far finishing moved the model; preference order is against the fp student, task accuracy "
        "against both (paired table below)."
    )


def _split_note(golden: list[dict[str, Any]]) -> str:
    train = sum(1 for r in golden if r.get("split") == "train")
    if not train:
        return ""
    return (
        f", {len(golden) - train} held out and {train} training prompts (the gate measures agreement with "
        "the trained model, not generalisation)"
    )


def load_thresholds(path: str | None) -> dict[str, float]:
    if not path:
        return {}
    import yaml

    d = yaml.safe_load(Path(path).read_text()) or {}
    d = d.get("thresholds", d.get("check", d))
    known = set(Thresholds.__dataclass_fields__)
    if set(d) - known:
        raise InvalidInput(f"{path}: unknown threshold(s) {sorted(set(d) - known)}; known: {sorted(known)}")
    return {k: float(v) for k, v in d.items()}

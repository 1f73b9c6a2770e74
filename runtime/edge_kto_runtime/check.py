"""The alignment check: does a quantized artifact still behave like the fp student?

Everything is measured on the golden set's token ids (never on chat strings), teacher-forced on
the fp model's greedy continuation:

- **KL divergence** per position, ``KL(P_fp || Q_art) = sum_v P(v) (log P(v) - log Q(v))`` in nats:
  the definition of llama.cpp's ``llama-perplexity --kl-divergence`` (base = the fp logits).
  The server has the full fp distribution. A device only has the fp top-k stored in
  ``golden.jsonl``; it uses the distributions coarsened to k+1 bins (the k fp-top tokens and
  "everything else"), ``sum_topk P (log P - log Q) + P_rest (log P_rest - log Q_rest)``, which is a
  lower bound of the full KL (data-processing inequality) and converges to it as k grows.
- **top-1 agreement**: the artifact's argmax equals the fp argmax.
- **the KL reference of a finished student**: quantization-aware finishing retrains the student
  through the 4-bit grid, so the weights an artifact stores are the *finished* model's, not the fp
  student's. KL and top-1 then compare the artifact with those finished fp weights (the golden
  rows' ``exported_top_logprobs``; the server uses the full finished model): they measure what the
  export and the runtime do (rounding, int8 activations, a wrong tokenizer). How far finishing moved
  the model from the fp student is reported as ``kld_student_mean``, and what that costs is gated
  where it matters: preference order and task accuracy are always measured against the fp student.
- **preference agreement**: for each desirable/undesirable completion pair of a prompt, the
  artifact orders their summed log-probs as the fp model does; plus how much of the margin is kept.
  Reported twice: on whole-answer pairs, and on *hard* pairs (a desirable answer vs its near miss
  with one fact broken), whose fp margins are small enough for quantization to flip.
- **greedy exact match**: the artifact's greedy ids equal the fp greedy ids.
- **task accuracy**: the task verifier on greedy outputs, fp (stored) vs artifact, and retention;
  the gate decides on the *paired* answers (:mod:`.paired`): prompts lost and gained, the interval
  of the net change, and a verdict (pass / inconclusive / fail) against two references --
  the weights the artifact stores (``paired_exported``: the export's own loss; for a finished
  student the finished weights' greedy answers, ``exported_greedy_text``) and the fp student
  (``paired_student``: everything after training, finishing included). The task verdict is the
  export's own, except that a loss *shown* against the fp student fails it too; without finishing
  the two references are one model.

A golden set may hold log-probs and completions on a subset of its rows (``detail_rows`` in the
manifest's golden entry): KL, top-1 and preference are measured there, greedy match and task
accuracy on every row.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import InvalidInput
from .model import EdgeModel
from .paired import paired_table, paired_verdict

FpLogprobs = Callable[[list[int], list[int]], np.ndarray]  # (ids, positions) -> full fp log-probs


@dataclass
class Thresholds:
    """Gate defaults: Q8_0 passes with a wide margin, a 2-bit or mis-tokenized artifact fails."""

    kld_mean_max: float = 0.25
    top1_min: float = 0.75
    pref_agree_min: float = 0.90
    # Accuracy points an artifact may lose against its reference, shown at 95% over the golden prompts
    # (paired.py). 5 points: 117 prompts suffice when 7.5% of answers change, 310 when 20% do.
    task_margin: float = 0.05
    task_retention_min: float = 0.0  # a point floor on acc/acc_fp on top of the paired rule; 0: off
    hard_pref_agree_min: float = 0.0  # hard (near-miss) pairs: reported; raise it to gate on them

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Thresholds":
        return cls(**{k: float(v) for k, v in (d or {}).items()})


def kl_full(p_logp: np.ndarray, q_logp: np.ndarray) -> np.ndarray:
    """Per-row KL(P || Q) from full log-prob rows (natural log)."""
    p = np.exp(p_logp)
    return (p * (p_logp - q_logp)).sum(axis=-1)


def kl_topk(top: list[list[list[float]]], q_logp: np.ndarray) -> np.ndarray:
    """Per-row KL over the fp top-k tokens plus one 'rest' bin (a lower bound of the full KL)."""
    out = np.empty(len(top))
    for i, row in enumerate(top):
        ids = np.array([int(t) for t, _ in row])
        lp = np.array([v for _, v in row], dtype=np.float64)
        p, q = np.exp(lp), np.exp(q_logp[i, ids])
        kl = float((p * (lp - q_logp[i, ids])).sum())
        p_rest, q_rest = max(1.0 - p.sum(), 0.0), max(1.0 - q.sum(), 1e-12)
        if p_rest > 1e-12:
            kl += p_rest * (math.log(p_rest) - math.log(q_rest))
        out[i] = kl
    return out


def _pairs(completions: list[dict]) -> list[tuple[int, int]]:
    good = [i for i, c in enumerate(completions) if c["label"] and not c.get("hard")]
    bad = [i for i, c in enumerate(completions) if not c["label"] and not c.get("hard")]
    return [(g, b) for g in good for b in bad]


def _hard_pairs(completions: list[dict]) -> list[tuple[int, int]]:
    return [(c["near_miss_of"], i) for i, c in enumerate(completions) if c.get("hard")]


def _greedy_ids(m: EdgeModel, prompt_ids: list[int], n: int) -> list[int]:
    out = []
    for tok in m.generate_ids(prompt_ids, n, 0.0):
        out.append(tok)
        if tok in m.eos_ids:
            break
    return out


def check_artifact(
    m: EdgeModel,
    golden: list[dict],
    verifier: Callable[[str, Any], bool] | None = None,
    fp_logprobs: FpLogprobs | None = None,
    thresholds: Thresholds | None = None,
    max_new_tokens: int | None = None,
    exported_logprobs: FpLogprobs | None = None,
) -> dict[str, Any]:
    """Metrics for one loaded artifact against the golden rows (and the full fp model when given).

    ``exported_logprobs``: the full fp model the artifact was made from, when it is not the fp
    student (a finished student); without it, rows with ``exported_top_logprobs`` use those.

    The artifact answers each prompt greedily with ``max_new_tokens`` (the golden set's budget, as the
    fp answers had) or, when not given, as many tokens as the fp answer; the answers are kept per row
    (``rows``), so the same decode also serves as the artifact's task evaluation.
    """
    th = thresholds or Thresholds()
    kl_k, kl_f, top1, kl_student = [], [], [], []
    pref, margins_fp, margins_art, greedy_eq, hard, hard_fp = [], [], [], [], [], []
    decoded = 0
    acc_fp, acc_exp, acc_art, ids_match, per_row = [], [], [], [], []
    # every answer at once where the backend decodes many together (same answers as one at a time)
    t_decode = time.perf_counter()
    many = m.greedy_ids_many([row["prompt_ids"] for row in golden], max_new_tokens) if max_new_tokens else None
    decode_s = time.perf_counter() - t_decode
    for k, row in enumerate(golden):
        p, g = row["prompt_ids"], row["greedy_ids"]
        ids_match.append(m.encode(row["messages"]) == p)  # the device's template + tokenizer give the trained ids
        if g and "top_logprobs" in row:  # rows past the golden set's detail_limit hold the greedy answer only
            ids, pos = p + g, list(range(len(p) - 1, len(p) - 1 + len(g)))
            q = m.logprobs(ids, pos)
            student = kl_full(fp_logprobs(ids, pos), q) if fp_logprobs is not None else kl_topk(row["top_logprobs"], q)
            kl_student.append(student)
            top = row.get("exported_top_logprobs") or row["top_logprobs"]
            ref = exported_logprobs if "exported_top_logprobs" in row else fp_logprobs
            kl_k.append(kl_topk(top, q))
            fp_top1 = np.array([t[0][0] for t in top])
            if ref is not None:
                pf = ref(ids, pos)
                kl_f.append(kl_full(pf, q))
                fp_top1 = pf.argmax(-1)
            top1.append(q.argmax(-1) == fp_top1)
        comps = row.get("completions") or []
        scored: dict[int, float] = {}

        def art_logp(i: int) -> float:
            if i not in scored:
                scored[i] = m.score_ids(p, comps[i]["ids"])
            return scored[i]

        for gi, bi in _pairs(comps):
            m_fp = comps[gi]["logp"] - comps[bi]["logp"]
            m_art = art_logp(gi) - art_logp(bi)
            pref.append((m_fp > 0) == (m_art > 0))
            margins_fp.append(abs(m_fp))
            margins_art.append(m_art if m_fp > 0 else -m_art)
        row_hard = None
        for gi, bi in _hard_pairs(comps):
            m_fp = comps[gi]["logp"] - comps[bi]["logp"]
            row_hard = (m_fp, art_logp(gi) - art_logp(bi))
            hard.append((m_fp > 0) == (row_hard[1] > 0))
            hard_fp.append(abs(m_fp))
        t_decode = time.perf_counter()
        art_ids = many[k] if many is not None else _greedy_ids(m, p, max_new_tokens or max(len(g), 1))
        decode_s += time.perf_counter() - t_decode
        decoded += len(art_ids)
        greedy_eq.append(art_ids == g)
        art_text = m.cut_at_stop(m.detokenize([t for t in art_ids if t not in m.eos_ids]).decode("utf-8", "replace"))
        ok_fp = ok_art = ok_exp = None
        if verifier is not None and row.get("reference") is not None:
            ok_fp, ok_art = (
                bool(verifier(row["greedy_text"], row["reference"])),
                bool(verifier(art_text, row["reference"])),
            )
            exp_text = row.get("exported_greedy_text")
            ok_exp = ok_fp if exp_text is None else bool(verifier(exp_text, row["reference"]))
            acc_fp.append(ok_fp)
            acc_exp.append(ok_exp)
            acc_art.append(ok_art)
        per_row.append(
            {
                "id": row.get("id"),
                "split": row.get("split", "eval"),
                "task_ok_fp": ok_fp,
                "task_ok_exported": ok_exp,
                "task_ok": ok_art,
                "greedy_match": greedy_eq[-1],
                "greedy_ids": art_ids,
                "answer": art_text,
                "hard_margin_fp": row_hard[0] if row_hard else None,
                "hard_margin": row_hard[1] if row_hard else None,
            }
        )
    res = _summarise(m, th, kl_k, kl_f, top1, pref, margins_fp, margins_art, greedy_eq, acc_fp, acc_art)
    res["kl_reference"] = "finished" if any("exported_top_logprobs" in r for r in golden) else "student"
    res["decode_s"], res["decode_tokens"] = round(decode_s, 3), decoded
    res["decode_tokens_per_s"] = round(decoded / decode_s, 2) if decode_s > 0 else None
    _task_verdict(res, acc_fp, acc_exp, acc_art, any("exported_greedy_text" in r for r in golden), th)
    res["kld_student_mean"] = float(np.concatenate(kl_student).mean()) if kl_student else None
    res["hard_pairs"] = len(hard)
    res["hard_pref_agree"] = float(np.mean(hard)) if hard else None
    res["hard_margin_fp_mean"] = float(np.mean(hard_fp)) if hard_fp else None
    if res["hard_pref_agree"] is not None and res["hard_pref_agree"] < th.hard_pref_agree_min:
        res["passed"] = False
        res["failures"].append(f"hard_pref_agree {res['hard_pref_agree']:.3f} < {th.hard_pref_agree_min}")
    res["prompt_ids_match"] = float(np.mean(ids_match)) if ids_match else None
    res["rows"] = per_row  # per golden prompt: which facts this artifact keeps (not stored in the manifest)
    if ids_match and not all(ids_match):
        res["passed"] = False
        res["failures"].append(
            f"chat template / tokenizer: {len(ids_match) - sum(ids_match)} of {len(ids_match)} golden "
            f"prompts tokenize differently on this artifact than in training"
        )
    return res


def task_decision(acc_fp: list, acc_exp: list, acc_art: list, finished: bool, margin: float) -> dict[str, Any]:
    """The paired task-accuracy decision against both references (module docstring), from per-prompt
    verdicts of the fp student, the stored weights and the artifact; ``failure`` says why it is not a pass."""
    if not acc_art:
        return {"paired_student": None, "paired_exported": None, "task_verdict": None, "failure": None}
    student = paired_verdict(acc_fp, acc_art, margin)
    exported = paired_verdict(acc_exp, acc_art, margin) if finished else student
    verdict = "fail" if student["verdict"] == "fail" else exported["verdict"]
    failure = None
    if verdict != "pass":
        which = exported if exported["verdict"] == verdict else student
        ref = "the weights it stores" if which is exported and finished else "the fp student"
        lo, hi = which["interval"]
        why = "a loss is shown" if verdict == "fail" else "not enough evidence either way"
        failure = (
            f"task accuracy vs {ref}: {which['lost']} lost, {which['gained']} gained of {which['n']} prompts, "
            f"net {which['diff']:+.1%} [{lo:+.1%}, {hi:+.1%}], margin {margin:.1%}: {verdict} ({why})"
        )
    return {
        "paired_student": student,
        "paired_exported": exported if finished else None,  # None: the stored weights are the fp student
        "task_verdict": verdict,
        "failure": failure,
    }


def _task_verdict(
    res: dict[str, Any], acc_fp: list, acc_exp: list, acc_art: list, finished: bool, th: Thresholds
) -> None:
    d = task_decision(acc_fp, acc_exp, acc_art, finished, th.task_margin)
    failure = d.pop("failure")
    res.update(d)
    if failure:
        res["passed"] = False
        res["failures"].append(failure)


def _summarise(
    m: EdgeModel,
    th: Thresholds,
    kl_k: list,
    kl_f: list,
    top1: list,
    pref: list,
    margins_fp: list,
    margins_art: list,
    greedy_eq: list,
    acc_fp: list,
    acc_art: list,
) -> dict[str, Any]:
    kk = np.concatenate(kl_k) if kl_k else np.zeros(0)
    kf = np.concatenate(kl_f) if kl_f else None
    kl = kf if kf is not None else kk
    res: dict[str, Any] = {
        "artifact": m.artifact.path,
        "backend": m.backend_name,
        "quant": m.artifact.quant,
        "bytes": m.artifact.entry.get("bytes"),
        "bits_per_weight": m.artifact.entry.get("bits_per_weight"),
        "positions": int(kl.size),
        "kl_source": "full" if kf is not None else "top-k",
        "kld_mean": float(kl.mean()) if kl.size else None,
        "kld_p99": float(np.percentile(kl, 99)) if kl.size else None,
        "kld_topk_mean": float(kk.mean()) if kk.size else None,
        "top1_agree": float(np.concatenate(top1).mean()) if top1 else None,
        "pairs": len(pref),
        "pref_agree": float(np.mean(pref)) if pref else None,
        "margin_fp_mean": float(np.mean(margins_fp)) if margins_fp else None,
        "margin_retention": float(np.mean(margins_art) / np.mean(margins_fp))
        if margins_fp and np.mean(margins_fp)
        else None,
        "greedy_match": float(np.mean(greedy_eq)) if greedy_eq else None,
        "task_acc_fp": float(np.mean(acc_fp)) if acc_fp else None,
        "task_acc": float(np.mean(acc_art)) if acc_art else None,
    }
    res["task_retention"] = (res["task_acc"] / res["task_acc_fp"]) if acc_fp and res["task_acc_fp"] else None
    fails = []
    if res["kld_mean"] is not None and res["kld_mean"] > th.kld_mean_max:
        fails.append(f"kld_mean {res['kld_mean']:.4f} > {th.kld_mean_max}")
    if res["top1_agree"] is not None and res["top1_agree"] < th.top1_min:
        fails.append(f"top1_agree {res['top1_agree']:.3f} < {th.top1_min}")
    if res["pref_agree"] is not None and res["pref_agree"] < th.pref_agree_min:
        fails.append(f"pref_agree {res['pref_agree']:.3f} < {th.pref_agree_min}")
    if res["task_retention"] is not None and res["task_retention"] < th.task_retention_min:
        fails.append(f"task_retention {res['task_retention']:.3f} < {th.task_retention_min}")
    res["passed"], res["failures"], res["thresholds"] = not fails, fails, asdict(th)
    return res


def read_golden(path: Path) -> list[dict]:
    # split on "\n" only: str.splitlines() also breaks at U+2028/U+2029/U+0085, which JSON strings may hold
    return [json.loads(x) for x in path.read_text(encoding="utf-8").split("\n") if x.strip()]


def markdown_table(results: list[dict[str, Any]]) -> str:
    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    finished = any(r.get("kl_reference") == "finished" for r in results)
    lines = [
        "| artifact | quant | MB | bits/w | KLD mean | KLD p99 | "
        + ("KLD vs fp student | " if finished else "")
        + "top-1 | pref. agree | hard pairs agree | margin kept | greedy match | task acc (fp) | passed |",
        "|---" * (13 + finished) + "|",
    ]
    for r in results:
        hard = f"{f(r.get('hard_pref_agree'), '.1%')} of {r['hard_pairs']}" if r.get("hard_pairs") else "-"
        drift = f"{f(r.get('kld_student_mean'), '.4f')} | " if finished else ""
        lines.append(
            f"| {r['artifact']} | {r['quant']} | {f((r.get('bytes') or 0) / 1e6, '.1f')} | "
            f"{f(r.get('bits_per_weight'), '.2f')} | {f(r['kld_mean'], '.4f')} | "
            f"{f(r['kld_p99'], '.3f')} | {drift}{f(r['top1_agree'], '.1%')} | {f(r['pref_agree'], '.1%')} | {hard} | "
            f"{f(r['margin_retention'], '.2f')} | {f(r['greedy_match'], '.1%')} | "
            f"{f(r['task_acc'], '.1%')} ({f(r['task_acc_fp'], '.1%')}) | {'yes' if r['passed'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n" + paired_table(results)


def run_device_check(
    bundle: str | Path,
    artifacts: list[str] | None = None,
    thresholds: dict[str, float] | None = None,
    n_threads: int | None = None,
    expect_digest: str | None = None,
) -> list[dict[str, Any]]:
    """The check a device runs on its own copy: fp values from ``golden.jsonl`` only (top-k KL).
    ``expect_digest``: the manifest sha256 printed at export; any other manifest is refused."""
    from .bundle import open_bundle
    from .model import load
    from .verifiers import get_verifier

    b = open_bundle(bundle, verify=True, expect_digest=expect_digest)
    g = b.manifest.get("golden")
    if not g:
        raise InvalidInput(f"{b.root}: the bundle has no golden set")
    golden = read_golden(b.file(g["path"]))
    verifier = get_verifier(g["verifier"]) if g.get("verifier") else None
    th = Thresholds.from_dict({**((b.manifest.get("alignment") or {}).get("thresholds") or {}), **(thresholds or {})})
    out = []
    for art in b.artifacts:
        if artifacts and art.path not in artifacts and art.path.rstrip("/") not in artifacts:
            continue
        with load(b.root, artifact=art.path, n_threads=n_threads, verify=False) as m:
            out.append(check_artifact(m, golden, verifier, None, th, g.get("max_new_tokens")))
    return out

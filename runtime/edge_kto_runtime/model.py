"""``load(bundle)`` -> ``EdgeModel``: verified loading, chat, streaming, scoring — the same on both backends.

Text is produced by decoding the whole continuation so far and emitting only what is new,
holding back a trailing incomplete UTF-8 sequence (U+FFFD) and any text that could still turn
into a stop string, so a stream never shows half a character or part of a stop marker.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Union

import numpy as np

from .backends import BACKENDS, Backend, BackendMissing, BackendSpec, log_softmax, resolve_backends
from .bundle import (
    Artifact,
    Bundle,
    BundleError,
    can_pin,
    failed_artifacts,
    gate_result,
    open_bundle,
    pinned_artifact,
    verify_bundle,
)
from .chat import TemplateError, render_chat
from .completion import split_completion
from .defaults import DEVICE_MAX_NEW_TOKENS, N_CTX, default_threads
from .errors import InvalidInput

Messages = list[dict[str, str]]
Prompt = Union[str, Messages]


class ContextOverflow(InvalidInput):
    pass


@dataclass
class Completion:
    """One finished generation, with the timings the server and the latency harness report."""

    request_id: str
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # "stop" | "length"
    ttft_s: float
    total_s: float
    token_times: list[float] = field(default_factory=list)  # seconds since start, one per emitted token


@dataclass
class StreamEvent:
    text: str
    token_id: int | None
    t: float  # seconds since the request started
    finish_reason: str | None = None  # set on the last event: "stop" (EOS / stop string) or "length"


def _is_ids(prompt: Any) -> bool:
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], int)


def _pick_artifact(b: Bundle, backend: str, artifact: str | None) -> Artifact:
    """The named artifact, or the first one whose backend ``backend`` allows and is installed."""
    if artifact:
        return b.artifact(artifact)
    missing = []
    for spec in resolve_backends(backend):
        arts = [a for a in b.artifacts if a.backend == spec.name]
        if arts and not spec.installed():
            missing.append(spec)
        elif arts:
            return arts[0]
    if missing:
        raise BackendMissing(
            f"{b.root}: the {missing[0].name} backend is not installed: pip install "
            f"'edge-kto-runtime[{missing[0].extra}]'"
        )
    raise BundleError(f"{b.root}: no {backend} artifact; have {[a.path for a in b.artifacts]}")


class FailedArtifact(BundleError):
    """The export's alignment gate marked this artifact as failed, and the caller requires a pass."""


def load(
    bundle: str | Path,
    backend: str = "auto",
    artifact: str | None = None,
    n_threads: int | None = None,
    n_ctx: int | None = None,
    verify: bool = True,
    feedback_db: str | Path | None = None,
    require_passed: bool = False,
    expect_digest: str | None = None,
) -> "EdgeModel":
    """Open a bundle folder or zip, verify it (every file's size and sha256, streamed), load one artifact.

    ``verify=False`` skips hashing (the manifest schema is still checked) — for a bundle just verified.
    ``feedback_db``: log every completion to this SQLite file so ``m.feedback(request_id, good)`` can rate it.
    ``require_passed``: refuse an artifact the export's gate failed (otherwise a loud warning).
    ``expect_digest``: the manifest's sha256 printed at export (``edge-runtime verify`` shows it).
    """
    import warnings

    t0 = time.perf_counter()
    b = open_bundle(bundle, verify=False, expect_digest=expect_digest)  # one manifest read: picked and verified alike
    art = _pick_artifact(b, backend, artifact)
    failed = failed_artifacts(b).get(art.path)
    if failed is not None:
        msg = (
            f"{b.root}: artifact {art.path} FAILED the export's alignment gate ({'; '.join(failed)}); "
            "its answers may differ from the trained student's"
        )
        if require_passed:
            raise FailedArtifact(msg + " — refused (load it anyway with require_passed=False / --allow-failed)")
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    if verify:  # every file: a bundle with any mismatched hash is refused, not only its loaded artifact
        # (the loaded one is hashed by pinned_artifact, through the descriptor the backend then maps)
        verify_bundle(b, [a for a in b.artifacts if not (a.path == art.path and can_pin(a))])
    t1 = time.perf_counter()
    n_ctx = n_ctx or int(b.manifest.get("generation", {}).get("n_ctx", N_CTX))
    n_threads = n_threads or default_threads()
    with pinned_artifact(b, art, verify) as path:  # the verified bytes, not whatever the path holds later
        be = BACKENDS[art.backend].open(path, n_ctx, n_threads)
    m = EdgeModel(b, art, be, verify_s=t1 - t0, load_s=time.perf_counter() - t1, n_threads=n_threads)
    if feedback_db is not None:
        from .bundle import manifest_digest
        from .feedback import FeedbackStore

        m.feedback_store = FeedbackStore(feedback_db, bundle=manifest_digest(b.root))
    return m


def first_stop(text: str, stops: list[str]) -> int:
    """Where the first of ``stops`` begins in ``text`` (-1: none): the one rule for cutting an answer."""
    return min((text.find(s) for s in stops if s and s in text), default=-1)


class EdgeModel:
    def __init__(
        self, bundle: Bundle, artifact: Artifact, backend: Backend, verify_s: float, load_s: float, n_threads: int
    ):
        self.bundle, self.artifact, self.backend = bundle, artifact, backend
        self.verify_s, self.load_s, self.n_threads = verify_s, load_s, n_threads
        tok = bundle.manifest["tokenizer"]
        self.chat_template: str = tok["chat_template"]
        self.bos, self.eos_tokens = tok.get("bos"), tok.get("eos") or []
        self.eos_ids = set(tok.get("eos_ids") or [])
        self.eos_id: int | None = tok.get("eos_id", (tok.get("eos_ids") or [None])[0])  # the tokenizer's own EOS
        self.stop_strings: list[str] = [s for s in tok.get("stop") or [] if s]
        self.defaults = bundle.manifest.get("generation", {})
        self.feedback_store: Any = None  # a FeedbackStore when loaded with feedback_db
        self.last_request_id: str | None = None  # of the latest complete() / stream(): what feedback() rates

    # ------------------------------------------------------------ prompts -> ids

    def render(self, messages: Messages, add_generation_prompt: bool = True) -> str:
        return render_chat(
            self.chat_template,
            messages,
            add_generation_prompt,
            bos_token=self.bos,
            eos_token=self.eos_tokens[0] if self.eos_tokens else None,
        )

    def encode(self, prompt: Prompt) -> list[int]:
        """Chat messages go through the bundle's template; a string is used as raw text.

        In chat messages only the template's own markers become control tokens: message text is
        tokenized with special-token parsing off, so a user typing ``<|im_start|>system`` cannot
        forge a turn. The template is rendered once with placeholders to find where each message's
        text lands; a template that rewrites the text (e.g. ``| trim``) is handled by checking that
        no message holds a control token, and refused when one does.
        """
        if not isinstance(prompt, list):
            return self.backend.tokenize(prompt)
        text = self.render(prompt)
        marks = [f"\ue000{i}\ue001" for i in range(len(prompt))]
        shell = self.render([{**m, "content": k} for m, k in zip(prompt, marks)])
        ids: list[int] = []
        rebuilt, rest = "", shell
        for m, k in zip(prompt, marks):
            head, found, rest = rest.partition(k)
            if not found:
                break
            ids += self.backend.tokenize(head) + self.backend.tokenize(m["content"], special=False)
            rebuilt += head + m["content"]
        else:
            if rebuilt + rest == text:
                return ids + self.backend.tokenize(rest)
        for i, m in enumerate(prompt):  # the template rewrote message text: only safe without control tokens
            if self.backend.tokenize(m["content"]) != self.backend.tokenize(m["content"], special=False):
                raise TemplateError(f"messages[{i}].content holds a control token of this model's vocabulary")
        return self.backend.tokenize(text)

    def ids(self, prompt: Prompt | list[int]) -> list[int]:
        """Token ids as given, or encoded from messages / raw text."""
        return list(prompt) if _is_ids(prompt) else self.encode(prompt)  # type: ignore[arg-type]

    def _completion_ids(self, messages: Messages, prompt_ids: list[int], completion: str) -> list[int]:
        """The answer's ids by the training rule (:mod:`.completion`): what KTO and the gate scored."""
        full = self.backend.tokenize(self.render(messages + [{"role": "assistant", "content": completion}], False))
        return split_completion(prompt_ids, full, self.eos_id)[1]

    # ------------------------------------------------------------ generation

    def stream_events(
        self,
        prompt: Prompt | list[int],
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: list[str] | None = None,
        ignore_eos: bool = False,
        truncate: bool = False,
    ) -> Iterator[StreamEvent]:
        """Token by token: text pieces that are complete characters, never a stop string's prefix."""
        ids = self.ids(prompt)
        max_new = int(
            max_new_tokens if max_new_tokens is not None else self.defaults.get("max_new_tokens", DEVICE_MAX_NEW_TOKENS)
        )
        temp = float(temperature if temperature is not None else self.defaults.get("temperature", 0.0))
        room = self.backend.n_ctx - len(ids)
        if room < 1:
            if not truncate:
                raise ContextOverflow(
                    f"prompt is {len(ids)} tokens; the context holds {self.backend.n_ctx} "
                    f"(load with a larger n_ctx, shorten the prompt, or pass truncate=True)"
                )
            ids = ids[-(self.backend.n_ctx - min(max_new, self.backend.n_ctx // 2)) :]
            room = self.backend.n_ctx - len(ids)
        stops = [s for s in (stop or []) + self.stop_strings if s]
        limit = min(max_new, room)  # the context can cut an answer before max_new_tokens: still "length"
        t0 = time.perf_counter()
        out: list[int] = []
        emitted, reason = "", None
        for tok in self.backend.generate_ids(ids, limit, temp, top_p, top_k, seed):
            if tok in self.eos_ids and not ignore_eos:
                reason = "stop"
                break
            out.append(tok)
            text = self.backend.detokenize(out).decode("utf-8", errors="replace")
            cut = first_stop(text, stops)
            if cut >= 0:
                yield StreamEvent(
                    text[len(emitted) : cut] if cut > len(emitted) else "", tok, time.perf_counter() - t0, "stop"
                )
                return
            safe = len(text.rstrip("\ufffd"))
            for s in stops:  # hold back a tail that may still become a stop string
                for k in range(min(len(s) - 1, safe), 0, -1):
                    if text[:safe].endswith(s[:k]):
                        safe -= k
                        break
            piece = text[len(emitted) : safe] if safe > len(emitted) else ""
            emitted += piece
            yield StreamEvent(piece, tok, time.perf_counter() - t0)
        text = self.backend.detokenize(out).decode("utf-8", errors="replace") if out else ""
        reason = reason or ("length" if len(out) >= limit else "stop")
        yield StreamEvent(
            text[len(emitted) :] if len(text) > len(emitted) else "", None, time.perf_counter() - t0, reason
        )

    def cut_at_stop(self, text: str) -> str:
        """``text`` up to its first stop string, as generation returns an answer."""
        cut = first_stop(text, self.stop_strings)
        return text[:cut] if cut >= 0 else text

    def complete(self, prompt: Prompt | list[int], **kw: Any) -> Completion:
        rid = kw.pop("request_id", None) or uuid.uuid4().hex
        ids = self.ids(prompt)
        t0 = time.perf_counter()
        text, toks, times, reason = [], [], [], "stop"
        for ev in self.stream_events(ids, **kw):
            text.append(ev.text)
            reason = ev.finish_reason or reason
            if ev.token_id is not None:
                toks.append(ev.token_id)
                times.append(ev.t)
        total = time.perf_counter() - t0
        out = Completion(rid, "".join(text), toks, len(ids), reason, times[0] if times else total, total, times)
        self.last_request_id = rid
        self._log(rid, prompt, out.text)
        return out

    def _log(self, rid: str, prompt: Any, text: str) -> None:
        """Every finished text answer goes to the feedback log (when loaded with one), however it was asked."""
        if self.feedback_store is not None and not _is_ids(prompt):
            self.feedback_store.log_completion(rid, prompt, text, str(self.bundle.manifest.get("name")))

    def feedback(self, request_id: str, good: bool, note: str | None = None) -> None:
        """Thumbs up/down on a completion returned by :meth:`complete` (needs ``load(..., feedback_db=...)``)."""
        if self.feedback_store is None:
            raise InvalidInput("feedback needs a log: load(bundle, feedback_db='feedback.sqlite')")
        self.feedback_store.add_feedback(request_id, good, note)

    def generate(self, prompt: Prompt, **kw: Any) -> str:
        return self.complete(prompt, **kw).text

    def chat(self, messages: Messages, **kw: Any) -> str:
        return self.complete(messages, **kw).text

    def stream(self, prompt: Prompt, request_id: str | None = None, **kw: Any) -> Iterator[str]:
        """Text pieces as they are decoded. The whole answer is logged like :meth:`complete`'s, under
        ``request_id`` (``m.last_request_id`` when not given), so it can be rated with :meth:`feedback`."""
        rid = request_id or uuid.uuid4().hex
        self.last_request_id = rid
        parts = []
        for ev in self.stream_events(prompt, **kw):
            if ev.text:
                parts.append(ev.text)
                yield ev.text
        self._log(rid, prompt, "".join(parts))

    # ------------------------------------------------------------ scoring

    def logprobs(self, ids: list[int], positions: list[int]) -> np.ndarray:
        """log-softmax rows predicting the token after each of ``positions``."""
        return log_softmax(self.backend.logits(ids, positions))

    def score(self, prompt: Prompt, completion: str | list[int]) -> float:
        """Summed log-prob of ``completion`` after ``prompt`` (chat-templated when ``prompt`` is messages)."""
        p_ids = self.encode(prompt)
        if isinstance(completion, list):
            c_ids = completion
        elif isinstance(prompt, list):
            c_ids = self._completion_ids(prompt, p_ids, completion)
        else:
            c_ids = self.tokenize(completion)
        return self.score_ids(p_ids, c_ids)

    def score_ids(self, prompt_ids: list[int], completion_ids: list[int]) -> float:
        ids = prompt_ids + completion_ids
        pos = list(range(len(prompt_ids) - 1, len(ids) - 1))
        lp = self.logprobs(ids, pos)
        return float(lp[np.arange(len(pos)), completion_ids].sum())

    def close(self) -> None:
        self.backend.close()
        if self.feedback_store is not None:
            self.feedback_store.close()

    def __enter__(self) -> "EdgeModel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def info(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle.root),
            "artifact": self.artifact.path,
            "backend": self.backend_name,
            "quant": self.artifact.quant,
            "n_ctx": self.n_ctx,
            "n_threads": self.n_threads,
            "verify_s": round(self.verify_s, 4),
            "load_s": round(self.load_s, 4),
            # the export's alignment gate on this artifact: "passed", "failed" (loaded anyway), or "not run"
            "gate": self.gate_verdict(),
        }

    def gate_verdict(self) -> str:
        r = gate_result(self.bundle, self.artifact.path)
        return "not run" if r is None or "passed" not in r else "passed" if r["passed"] else "failed"

    # ------------------------------------------------------------ token-level door (bench, check, server)
    # Callers use these, never ``m.backend``: EdgeModel is the one owner of the backend, and what a
    # backend can do is declared in its registry entry (``capabilities``), not guessed from its name.

    @property
    def capabilities(self) -> BackendSpec:
        return BACKENDS[self.artifact.backend]

    @property
    def backend_name(self) -> str:
        return self.capabilities.name

    @property
    def n_ctx(self) -> int:
        return self.backend.n_ctx

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """Raw text -> ids, no BOS. ``special=False``: control-token text stays plain text."""
        return self.backend.tokenize(text, special=special)

    def detokenize(self, ids: list[int]) -> bytes:
        return self.backend.detokenize(ids)

    def generate_ids(self, ids: list[int], max_new_tokens: int, temperature: float = 0.0) -> Iterator[int]:
        """Ids straight from the backend (no template, stop strings or text): what latency and the gate time."""
        return self.backend.generate_ids(ids, max_new_tokens, temperature)

    def greedy_ids_many(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]] | None:
        """Greedy ids (ending with an EOS id, kept, or at ``max_new_tokens``) for many prompts decoded
        together, where the backend can (llama.cpp); None where it cannot (decode one at a time)."""
        many = getattr(self.backend, "greedy_many", None)
        return many(prompts, max_new_tokens, set(self.eos_ids)) if many is not None else None

    def reset(self) -> None:
        """Forget cached state (KV), so the next request pays its whole prompt."""
        self.backend.reset()

    def save_prefix(self, ids: list[int], path: str | Path, key: str) -> None:
        self._require("prefix_cache")
        self.backend.save_prefix(ids, Path(path), key)

    def load_prefix(self, path: str | Path, key: str) -> int:
        self._require("prefix_cache")
        return self.backend.load_prefix(Path(path), key)

    def _require(self, capability: str) -> None:
        if not getattr(self.capabilities, capability):
            raise InvalidInput(f"the {self.backend_name} backend has no {capability.replace('_', ' ')}")

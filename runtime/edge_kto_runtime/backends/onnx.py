"""onnxruntime-genai: ``og.Model`` + ``og.Generator``; logits from the generator's ``logits`` output."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import ToolError
from . import BackendMissing

try:
    import onnxruntime_genai as og
except ImportError as e:  # pragma: no cover - exercised in the runtime-only CI venv
    raise BackendMissing("the ONNX backend needs onnxruntime-genai: pip install 'edge-kto-runtime[onnx]'") from e


class OnnxGenaiBackend:
    name = "onnxruntime-genai"

    def __init__(self, path: Path, n_ctx: int, n_threads: int):
        import json

        cfg = og.Config(str(path))
        cfg.clear_providers()  # CPU
        cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": n_threads}}}}))
        self.model = og.Model(cfg)
        self.tokenizer = og.Tokenizer(self.model)
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_vocab = int(self._vocab_size(path))
        self.specials = self._special_texts(path)

    @staticmethod
    def _vocab_size(path: Path) -> int:
        import json

        return json.loads((path / "genai_config.json").read_text())["model"]["vocab_size"]

    @staticmethod
    def _special_texts(path: Path) -> list[str]:
        """Control-token strings of the vocabulary (``tokenizer.json`` added tokens marked special)."""
        import json

        tj = path / "tokenizer.json"
        if not tj.is_file():
            return []
        added = json.loads(tj.read_text(encoding="utf-8")).get("added_tokens") or []
        return sorted({t["content"] for t in added if t.get("special") and t.get("content")}, key=len, reverse=True)

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """onnxruntime-genai always parses control tokens; with ``special=False`` every control-token
        string in ``text`` is encoded in two halves, so it stays plain text (never the control id)."""
        hits = [s for s in self.specials if s in text] if not special else []
        if not hits:
            return [int(t) for t in self.tokenizer.encode(text)] if text else []
        import re

        ids: list[int] = []
        for piece in re.split("(" + "|".join(map(re.escape, hits)) + ")", text):
            if piece in hits:
                ids += self.tokenize(piece[:1], True) + self.tokenize(piece[1:], False)
            elif piece:
                ids += [int(t) for t in self.tokenizer.encode(piece)]
        return ids

    def detokenize(self, ids: list[int]) -> bytes:
        return self.tokenizer.decode(np.asarray(ids, dtype=np.int32)).encode("utf-8")

    def _generator(self, max_length: int, **search) -> "og.Generator":
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=max_length, **search)
        return og.Generator(self.model, params)

    def generate_ids(
        self,
        ids: list[int],
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
    ) -> Iterator[int]:
        search: dict = {"do_sample": temperature > 0}
        if temperature > 0:
            search.update(temperature=temperature, top_p=top_p, **({"top_k": top_k} if top_k else {}))
            if seed is not None:
                search["random_seed"] = seed
        gen = self._generator(min(self.n_ctx, len(ids) + max_new_tokens), **search)
        gen.append_tokens(ids)
        n = 0
        while not gen.is_done() and n < max_new_tokens:
            gen.generate_next_token()
            n += 1
            yield int(gen.get_next_tokens()[0])

    def logits(self, ids: list[int], positions: list[int]) -> np.ndarray:
        gen = self._generator(len(ids) + 1)
        gen.append_tokens(ids)
        out = np.asarray(gen.get_output("logits"), dtype=np.float32)
        out = out.reshape(-1, out.shape[-1])  # [len(ids), vocab] after a prompt
        if out.shape[0] != len(ids):
            raise ToolError(f"onnxruntime-genai returned logits for {out.shape[0]} positions, expected {len(ids)}")
        return out[positions]

    def reset(self) -> None:
        """Nothing to forget: every request builds a fresh generator (no prefix cache on this backend)."""

    def close(self) -> None:
        del self.model

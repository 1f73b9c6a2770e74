"""Rule verifiers: does a completion satisfy the row's ``reference``? (Pure Python: the device-side
alignment check scores task accuracy with the same functions as labeling on the server.)

Each verifier is ``f(completion, reference) -> bool``. A user's own rule plugs in as
``"package.module:function"`` with the same signature.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Callable

from .errors import InvalidInput
from .plugins import import_target

Verifier = Callable[[str, Any], bool]


def normalize(text: str) -> str:
    """Lowercase, strip accents' compatibility forms, collapse whitespace, drop edge punctuation."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"\s+", " ", text).strip()
    return text.strip(" .!?;:,\"'`")


def exact(completion: str, reference: Any) -> bool:
    return completion.strip() == str(reference).strip()


def normalized_exact(completion: str, reference: Any) -> bool:
    return normalize(completion) == normalize(str(reference))


def fold(text: str) -> str:
    """How ``contains_all`` compares text: NFKC, lowercase, whitespace runs as one space."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", str(text)).lower())


def contains_all(completion: str, reference: Any) -> bool:
    """Every phrase must appear (case- and whitespace-insensitive)."""
    phrases = [reference] if isinstance(reference, str) else list(reference or [])
    if not phrases:
        raise InvalidInput("contains_all needs a non-empty list of phrases as reference")
    hay = fold(completion)
    return all(fold(p).strip() in hay for p in phrases)


def regex(completion: str, reference: Any) -> bool:
    return re.search(str(reference), completion, flags=re.DOTALL) is not None


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")


def extract_last_number(text: str) -> float | None:
    """The final number in the text ('#### 42', 'the answer is 1,234.5'); None if there is none."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def numeric(completion: str, reference: Any, rel_tol: float = 1e-6) -> bool:
    got = extract_last_number(completion)
    if got is None:
        return False
    want = float(reference)
    return abs(got - want) <= rel_tol * max(1.0, abs(want))


BUILTIN: dict[str, Verifier] = {
    "exact": exact,
    "normalized_exact": normalized_exact,
    "contains_all": contains_all,
    "regex": regex,
    "numeric": numeric,
}


def get_verifier(spec: str) -> Verifier:
    """A built-in name (a key of ``BUILTIN``: the one list of them), or ``module:function`` for a user's own rule."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    if ":" in spec:
        fn = import_target(spec, "verifier")
        if not callable(fn):
            raise InvalidInput(f"verifier {spec!r} is not callable")
        return fn
    raise InvalidInput(f"unknown verifier {spec!r}: one of {', '.join(BUILTIN)} or 'module:function'")

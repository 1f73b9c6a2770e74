"""The verifiers live in the runtime package (no torch), shared by labeling and the device check."""

from edge_kto_runtime.verifiers import (
    BUILTIN,
    Verifier,
    contains_all,
    exact,
    extract_last_number,
    get_verifier,
    normalize,
    normalized_exact,
    numeric,
    regex,
)

__all__ = [
    "BUILTIN",
    "Verifier",
    "contains_all",
    "exact",
    "extract_last_number",
    "get_verifier",
    "normalize",
    "normalized_exact",
    "numeric",
    "regex",
]

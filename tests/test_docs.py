"""The docs state what the code is: every module is in ARCHITECTURE's layout, every "one owner" names
a file that exists, and bundle.py's claim about its imports holds."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCH = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = ARCH.index(f"## {title}")
    nxt = ARCH.find("\n## ", start + 3)
    return ARCH[start : nxt if nxt != -1 else None]


def _modules() -> list[Path]:
    return [
        p
        for pkg in (ROOT / "edge_kto", ROOT / "runtime" / "edge_kto_runtime")
        for p in sorted(pkg.rglob("*.py"))
        if p.name != "__init__.py" and "build" not in p.parts
    ]


def test_every_module_is_in_the_layout():
    layout = _section("Layout")
    missing = [str(p.relative_to(ROOT)) for p in _modules() if p.name not in layout]
    assert not missing, f"modules missing from docs/ARCHITECTURE.md's layout: {missing}"


def test_every_one_owner_row_names_a_file_that_exists():
    owners = _section("One owner per thing")
    named = set(re.findall(r"`((?:edge_kto|edge_kto_runtime|tests)/[\w/]+\.py)`", owners))
    assert named, "the section names its owners by file"
    for rel in sorted(named):
        candidates = [ROOT / rel, ROOT / "runtime" / rel]
        assert any(c.is_file() for c in candidates), f"{rel} is named as an owner but does not exist"


def test_bundle_imports_only_the_standard_library_and_its_package():
    tree = ast.parse((ROOT / "runtime" / "edge_kto_runtime" / "bundle.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # this package
                continue
            names = [(node.module or "").split(".")[0]]
        else:
            continue
        for n in names:
            assert n in sys.stdlib_module_names or n == "__future__", f"bundle.py imports {n}"

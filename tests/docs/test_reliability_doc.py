"""docs/RELIABILITY.md promises that every row names a test that runs in CI: each test it names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "RELIABILITY.md"
#: ``tests/…/test_x.py::test_name`` or a bare ``tests/…/test_x.py``
REF = re.compile(r"(tests/[\w/]+\.py)(?:::(\w+))?")


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_every_test_the_reliability_table_names_exists() -> None:
    rows = [line for line in DOC.read_text(encoding="utf-8").splitlines() if line.startswith("|") and "tests/" in line]
    assert len(rows) >= 12  # issue #14: at least 12 rows
    missing = []
    for row in rows:
        refs = REF.findall(row)
        assert refs, row
        for file, name in refs:
            path = ROOT / file
            if not path.is_file():
                missing.append(file)
            elif name and name not in _test_names(path):
                missing.append(f"{file}::{name}")
    assert not missing, f"RELIABILITY.md names tests that do not exist: {missing}"

"""docs/ARCHITECTURE.md stays true as the code moves: every repository path it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "ARCHITECTURE.md"
TOP = ("sdk", "agent", "compressor", "kernels", "protos", "device_profiles", "tests", "docs")
#: a path into one of the fixed top-level folders, as written in prose, code spans or the diagram
_PATH = re.compile(r"(?<![\w./-])((?:" + "|".join(TOP) + r")/[\w./*-]*)")


def named_paths(text: str) -> set[str]:
    return {m.rstrip(".,:;)") for m in _PATH.findall(text)}


def test_every_path_the_architecture_page_names_exists() -> None:
    paths = named_paths(PAGE.read_text(encoding="utf-8"))
    assert len(paths) >= 40, sorted(paths)  # the page is the map: it names the modules, not a few folders
    missing = []
    for p in sorted(paths):
        hits = list(ROOT.glob(p)) if "*" in p else [ROOT / p] if (ROOT / p).exists() else []
        if not hits:
            missing.append(p)
    assert not missing, f"docs/ARCHITECTURE.md names paths that do not exist: {missing}"


def test_the_checker_sees_a_missing_path() -> None:
    assert named_paths("see `compressor/search/nothing_here.py` and sdk/fitting/api.py.") == {
        "compressor/search/nothing_here.py", "sdk/fitting/api.py"}
    assert not (ROOT / "compressor/search/nothing_here.py").exists()

"""No Markdown link in README.md or docs/ leaves the repository, and every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)|<(https?://[^>]+)>")
_BARE = re.compile(r"(?<![`\w/])https?://[^\s)>\]`]+")
_FENCE = re.compile(r"^\s*```")
#: pages linked before they exist, with who writes them; a link to one resolves as soon as the file lands
PENDING: dict[Path, str] = {}


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _prose(text: str) -> str:
    """The page without its fenced blocks and inline code (links are not parsed there)."""
    out, inside = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            out.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def links(page: Path) -> list[str]:
    text = _prose(page.read_text(encoding="utf-8"))
    found = [next(g for g in m.groups() if g) for m in _LINK.finditer(text)]
    return found + _BARE.findall(text)


def test_no_link_leaves_the_repository_and_relative_links_resolve() -> None:
    problems = []
    count = 0
    for page in pages():
        for target in links(page):
            count += 1
            where = f"{page.relative_to(ROOT)}: {target}"
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
                problems.append(f"{where} leaves the repository")
                continue
            path = target.split("#", 1)[0]
            if not path:
                continue  # an anchor on the same page
            resolved = (page.parent / path).resolve()
            if not resolved.exists() and resolved in PENDING:
                continue
            if not resolved.exists():
                problems.append(f"{where} does not resolve ({resolved})")
            elif ROOT not in resolved.parents and resolved != ROOT:
                problems.append(f"{where} points outside the repository")
    assert not problems, "\n".join(problems)
    assert count >= 20, f"only {count} links found: is the link parser broken?"


def test_readme_links_the_docs_and_the_architecture_not_shared() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "shared/DESIGN.md" not in text
    for target in ("docs/index.md", "docs/quickstart.md", "docs/cli.md", "docs/api.md", "docs/ARCHITECTURE.md"):
        assert f"]({target}" in text, f"README does not link {target}"

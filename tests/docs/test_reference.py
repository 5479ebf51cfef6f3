"""docs/cli.md and docs/api.md are generated from the code; a stale page fails here (fix: `make docs`)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gen_reference"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_cli_reference_matches_the_parser() -> None:
    gen = _gen()
    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert page == gen.render_cli(), "docs/cli.md is stale: run `make docs`"
    from devicefit.cli import COMMAND_MODULES

    for name in COMMAND_MODULES:  # every registered area shows up (demo, fit, search-worker, …)
        if name not in ("models", "agent"):
            assert f"## devicefit {name}" in page
    for cmd in ("inspect", "export", "bench", "deploy", "agent serve", "search-worker", "profiles validate"):
        assert f"## devicefit {cmd}" in page


def test_cli_reference_changes_when_the_parser_does(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = _gen()
    import devicefit.cli as cli

    before = gen.render_cli()
    real = cli.build_parser

    def patched() -> argparse.ArgumentParser:
        p = real()
        p.add_argument("--brand-new-flag", help="an option the page does not know")
        return p

    monkeypatch.setattr(cli, "build_parser", patched)
    after = gen.render_cli()
    assert before != after and "--brand-new-flag" in after


def test_api_reference_matches_the_docstrings() -> None:
    gen = _gen()
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert page == gen.render_api(), "docs/api.md is stale: run `make docs`"
    import devicefit

    for name in devicefit.__all__:
        assert f"### devicefit.{name}\n" in page
    for cls in ("Plan", "LayerRule"):
        assert f"### devicefit.compressor.plan.{cls}\n" in page
    assert "### devicefit.compressor.techniques.Int8Static\n" in page


def test_readme_cli_table_lists_every_command() -> None:
    gen = _gen()
    from devicefit.cli import build_parser

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## CLI at a glance"):]
    names = [name for name, _help, _p in gen._subcommands(build_parser())]
    assert "demo" in names
    missing = [n for n in names if f"`devicefit {n}" not in table]
    assert not missing, f"README's CLI table lacks {missing}"

"""protos/ owns the wire contract: it imports nothing from the agent, the compressor or the SDK, and both sides
import the contract (conversions, Manifest, BenchReport, error codes, chunk codec) from it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


@pytest.mark.parametrize("path", sorted(PROTOS.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_protos_import_only_protos(path: Path) -> None:
    outside = {m for m in _imports(path) if m.startswith("devicefit") and not m.startswith("devicefit.protos")}
    assert outside == set(), f"{path.name} imports {sorted(outside)}"


def test_agent_and_transport_share_the_contract() -> None:
    from devicefit.agent import benchmark
    from devicefit.protos import errors, report
    from devicefit.transport import grpc_transport

    assert benchmark.BenchReport is report.BenchReport
    assert grpc_transport.AgentError is errors.AgentError
    moved = ("errors", "wire", "chunks", "manifest")
    assert not [m for m in moved if (ROOT / "agent" / f"{m}.py").exists()]
    for path in [*(ROOT / "agent").rglob("*.py"), *(ROOT / "sdk" / "transport").rglob("*.py")]:
        stale = {m for m in _imports(path) if m.removeprefix("devicefit.agent.") in moved and m.startswith("devicefit.agent.")}
        assert stale == set(), f"{path} imports the contract from the agent: {sorted(stale)}"

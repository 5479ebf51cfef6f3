"""The checked-in stubs of protos/devicefit/v1 are exactly what protos/generate.py produces (not stale)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from devicefit.protos import generate
from devicefit.protos.schema import SCHEMA_VERSION, schema_problem, stamp

pytest.importorskip("grpc_tools")


_VERSION_STAMPS = [
    re.compile(r"^# Protobuf Python Version: .*$", re.MULTILINE),
    re.compile(r"ValidateProtobufRuntimeVersion\(.*?\)", re.DOTALL),
    re.compile(r"^GRPC_GENERATED_VERSION = .*$", re.MULTILINE),
]


def _normalized(path: Path) -> str:
    """Stub text without the generator's version stamps: a newer grpcio-tools is not "stale"."""
    text = path.read_text()
    for rx in _VERSION_STAMPS:
        text = rx.sub("<version>", text)
    return text


def test_checked_in_stubs_are_fresh(tmp_path: Path) -> None:
    fresh = generate.generate(tmp_path)
    assert fresh, "protoc produced nothing"
    names = sorted(p.name for p in fresh)
    checked_in = sorted(
        p.name for p in generate.PROTO_DIR.iterdir() if p.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"))
    )
    assert names == checked_in, "stub files differ: run `make protos`"
    stale = [p.name for p in fresh if _normalized(p) != _normalized(generate.PROTO_DIR / p.name)]
    assert not stale, f"stale generated stubs {stale}: run `make protos` and commit the result"


def test_imports_are_rewritten_to_the_package() -> None:
    for p in generate.PROTO_DIR.glob("*_pb2*.py"):
        text = p.read_text()
        assert "from devicefit.v1 import" not in text, p.name
    from devicefit.protos.devicefit.v1 import agent_pb2_grpc

    assert hasattr(agent_pb2_grpc, "DeviceAgentStub")


def test_every_message_has_a_schema_version() -> None:
    from devicefit.protos.devicefit.v1 import agent_pb2, artifact_pb2, benchmark_pb2, common_pb2

    messages = [
        m
        for mod in (agent_pb2, artifact_pb2, benchmark_pb2, common_pb2)
        for m in mod.DESCRIPTOR.message_types_by_name.values()
    ]
    assert len(messages) >= 20
    for m in messages:
        field = m.fields_by_name.get("schema_version")
        assert field is not None and field.number == 1, m.full_name


def test_schema_check_and_stamp() -> None:
    from devicefit.protos.devicefit.v1 import benchmark_pb2

    assert schema_problem(SCHEMA_VERSION) is None
    assert schema_problem("1.7") is None  # minor differences are compatible
    assert "major differs" in (schema_problem("2.0") or "")
    assert "no schema_version" in (schema_problem("") or "")
    r = benchmark_pb2.BenchmarkReport(p50_ms=1.0)
    r.per_node.add(name="n")
    stamp(r)
    assert r.schema_version == SCHEMA_VERSION and r.per_node[0].schema_version == SCHEMA_VERSION

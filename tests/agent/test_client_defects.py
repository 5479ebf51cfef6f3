"""Client-side defects of issue #14 (9): timeouts told apart from unreachable agents, BUSY retried,
manifest file names confined to the manifest's directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from devicefit.artifact import Artifact
from devicefit.errors import DeviceError, UserInputError
from devicefit.protos import errors as E
from devicefit.protos import wire
from devicefit.protos.devicefit.v1 import agent_pb2
from devicefit.protos.schema import stamp
from devicefit.transport.grpc_transport import GrpcTransport

pytestmark = pytest.mark.timeout(60)


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "Deadline Exceeded"


def _transport(stub: Any) -> GrpcTransport:
    t = object.__new__(GrpcTransport)  # no channel: only the call plumbing is under test
    t.url, t.target, t.timeout, t.benchmark_timeout = "grpc://h:1", "h:1", 1.0, 1.0
    t._stub = stub
    t.busy_retries, t.busy_backoff_s = 3, 0.01
    return t


def test_deadline_exceeded_is_not_reported_as_unreachable() -> None:
    err = _transport(None)._rpc_error("Benchmark", _RpcError(grpc.StatusCode.DEADLINE_EXCEEDED))
    assert "unreachable" not in err.problem and "start it" not in (err.fix or "")
    assert "Benchmark" in err.problem and "timed out" in err.problem


def test_busy_is_retried() -> None:
    answers = [E.BUSY, E.BUSY, ""]

    class Stub:
        calls = 0

        def ListModels(self, request: Any, timeout: float) -> Any:
            Stub.calls += 1
            code = answers.pop(0)
            st = wire.error_status(code, "busy", "wait") if code else wire.ok_status()
            return stamp(agent_pb2.ModelList(status=st, active_sha256="a" * 64))

    t = _transport(Stub())
    assert t.list_models()["active_sha256"] == "a" * 64 and Stub.calls == 3
    answers[:] = [E.BUSY] * 10
    with pytest.raises(DeviceError, match="busy"):
        t.list_models()


@pytest.mark.parametrize("name", ["../outside.onnx", "/etc/passwd", "sub/../../x.onnx", "..", "a\\..\\b.onnx"])
def test_manifest_file_name_cannot_leave_its_directory(tmp_path: Path, tiny_onnx: Path, name: str) -> None:
    d = tmp_path / "art"
    d.mkdir()
    (d / "model.onnx").write_bytes(tiny_onnx.read_bytes())
    Artifact.from_file(d / "model.onnx").save()
    m = json.loads((d / "manifest.json").read_text())
    m["file_name"] = name
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserInputError, match="not a plain file name"):
        Artifact.load(d)

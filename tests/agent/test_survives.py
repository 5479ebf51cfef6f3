"""A live agent (--trust, short idle timeout) refuses or survives hostile requests while it keeps serving its active
model and answering health checks within 1 s (issue #14, Done when)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import devicefit
from devicefit.agent.launch import AgentProcess, spawn_agent
from devicefit.artifact import Artifact
from devicefit.cli.keys import init_keys
from devicefit.errors import DeviceError
from devicefit.protos import errors as E
from devicefit.protos import wire
from devicefit.protos.devicefit.v1 import agent_pb2_grpc, artifact_pb2
from devicefit.protos.schema import stamp

from .conftest import signed_artifact

pytestmark = pytest.mark.timeout(240)
HEALTH_DEADLINE_S = 1.0


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return init_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]) -> Iterator[AgentProcess]:
    args = ("--trust", str(keys[1]), "--idle-timeout", "2")
    with spawn_agent(tmp_path_factory.mktemp("agent") / "store", device_id="hard", extra_args=args) as proc:
        yield proc


def _signed(tmp: Path, model: Path, key: Path, version: str, name: str) -> Artifact:
    return signed_artifact(tmp, model, key, version=version, name=name, model_id="svc")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def active(agent: AgentProcess, keys: tuple[Path, Path], tiny_onnx: Path,
           tmp_path_factory: pytest.TempPathFactory) -> str:
    art = _signed(tmp_path_factory.mktemp("v5"), tiny_onnx, keys[0], "5", "a")
    with devicefit.connect(agent.url) as dev:
        res = dev.deploy(art, progress=False)
    assert res.active
    return res.sha256


def _serving(agent: AgentProcess) -> tuple[bool, str, int]:
    """(health answered SERVING within the deadline, the active model's sha256, runs of a 2-run benchmark)."""
    target = agent.url.removeprefix("grpc://")
    with grpc.insecure_channel(target) as ch:
        st = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_DEADLINE_S)
    with devicefit.connect(agent.url) as dev:
        active = dev.transport.list_models()["active_sha256"]
        runs = dev.benchmark(runs=2, warmup=0).runs  # the active model runs
    return st.status == health_pb2.HealthCheckResponse.SERVING, active, runs


def _still_serving(agent: AgentProcess, sha: str) -> None:
    assert _serving(agent) == (True, sha, 2)


def _refusal(fn: Callable[[], object]) -> str | None:
    """The error code of the DeviceError ``fn`` raises (the test fails if it raises none)."""
    with pytest.raises(DeviceError) as exc:
        fn()
    return getattr(exc.value, "code", None)


def test_mis_signed_and_replayed_artifacts(agent: AgentProcess, active: str, keys: tuple[Path, Path],
                                          tiny_onnx_b: Path, tmp_path: Path) -> None:
    other, _ = init_keys(tmp_path / "other")
    foreign = _signed(tmp_path, tiny_onnx_b, other, "9", "foreign")
    older = _signed(tmp_path, tiny_onnx_b, keys[0], "4", "older")
    with devicefit.connect(agent.url) as dev:
        assert _refusal(lambda: dev.deploy(foreign, progress=False)) == E.SIGNATURE_INVALID
        assert _refusal(lambda: dev.deploy(older, progress=False)) == E.REPLAYED
    assert _serving(agent) == (True, active, 2)


def test_traversal_file_name_and_oversize_chunk(agent: AgentProcess, active: str, tiny_onnx_b: Path) -> None:
    m = wire.manifest_to_proto(Artifact.from_file(tiny_onnx_b).manifest)
    m.file_name = "../../../etc/cron.d/x"
    ch = grpc.insecure_channel(agent.url.removeprefix("grpc://"))
    stub = agent_pb2_grpc.DeviceAgentStub(ch)
    res = stub.Upload(iter([stamp(artifact_pb2.UploadChunk(upload_id="trav", manifest=m, data=tiny_onnx_b.read_bytes()))]),
                      timeout=30)
    assert res.status.code == E.INVALID_ARGUMENT and "file_name" in res.status.message
    m.file_name = "x.onnx"
    big = stamp(artifact_pb2.UploadChunk(upload_id="big", manifest=m, data=os.urandom(5 * 1024 * 1024)))
    with pytest.raises(grpc.RpcError) as exc:
        stub.Upload(iter([big]), timeout=30)
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    ch.close()
    _still_serving(agent, active)


def test_sixteen_idle_upload_streams(agent: AgentProcess, active: str, tiny_onnx_b: Path) -> None:
    m = wire.manifest_to_proto(Artifact.from_file(tiny_onnx_b).manifest)
    m.sha256 = ""  # a fresh upload whose digest the stream would deliver (not a blob the agent holds)
    release = threading.Event()

    def silent(i: int) -> Iterator[artifact_pb2.UploadChunk]:
        yield stamp(artifact_pb2.UploadChunk(upload_id=f"idle-{i}", manifest=m))
        release.wait(60)

    chans = [grpc.insecure_channel(agent.url.removeprefix("grpc://")) for _ in range(16)]
    futs = [agent_pb2_grpc.DeviceAgentStub(c).Upload.future(silent(i), timeout=60) for i, c in enumerate(chans)]
    try:
        time.sleep(1.0)
        _still_serving(agent, active)
        for f in futs:  # every stream is answered (BUSY at once, or closed by the idle timeout), none hangs
            try:
                assert not f.result(timeout=30).status.ok
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.CANCELLED
    finally:
        release.set()
        for c in chans:
            c.close()
    _still_serving(agent, active)


def test_a_model_that_fails_at_load(agent: AgentProcess, active: str, keys: tuple[Path, Path], tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07" + os.urandom(8192))  # an ONNX-looking header, then garbage
    art = _signed(tmp_path, junk, keys[0], "6", "junk")
    with devicefit.connect(agent.url) as dev:
        assert _refusal(lambda: dev.deploy(art, progress=False)) == E.LOAD_FAILED
    assert _serving(agent) == (True, active, 2)

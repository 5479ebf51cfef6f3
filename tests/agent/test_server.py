"""A real agent process on a free loopback port, driven through the SDK and the raw wire contract."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

import devicefit
from devicefit.agent.launch import AgentProcess, spawn_agent
from devicefit.device import Device
from devicefit.errors import DeviceError, UserInputError
from devicefit.protos import errors as E
from devicefit.protos import wire
from devicefit.protos.devicefit.v1 import agent_pb2, agent_pb2_grpc, artifact_pb2, benchmark_pb2
from devicefit.protos.manifest import Manifest
from devicefit.protos.schema import SCHEMA_VERSION

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    with spawn_agent(tmp_path_factory.mktemp("agent") / "store", device_id="test-dev") as proc:
        yield proc


@pytest.fixture()
def dev(agent: AgentProcess) -> Iterator[Device]:
    with devicefit.connect(agent.url) as d:
        yield d


def _stub(url: str) -> tuple[grpc.Channel, agent_pb2_grpc.DeviceAgentStub]:
    ch = grpc.insecure_channel(url.removeprefix("grpc://"))
    return ch, agent_pb2_grpc.DeviceAgentStub(ch)


def _active(dev: Device) -> str | None:
    return dev.transport.list_models()["active_sha256"]


def test_health_and_info(dev: Device, agent: AgentProcess) -> None:
    assert dev.transport.health() == "SERVING"  # type: ignore[attr-defined]
    info = dev.info()
    assert info["device_id"] == "test-dev" == dev.id
    assert info["cores_logical"] >= 1 and info["memory_mb"] > 0 and info["arch"]
    assert set(info["formats"]) == {"onnx", "tflite"} and "onnxruntime" in info["runtimes"]
    assert info["agent_rss_mb"] > 10
    assert agent.url.startswith("grpc://127.0.0.1:")


def test_deploy_benchmark_rollback_delete(dev: Device, tiny_onnx: Path, tiny_onnx_b: Path) -> None:
    seen: list[tuple[int, int]] = []
    a = dev.deploy(tiny_onnx, progress=lambda d, t: seen.append((d, t)))
    assert a.active and a.model_id == "tiny_text" and a.device_id == "test-dev"
    assert a.bytes_sent == a.size_bytes == tiny_onnx.stat().st_size and a.first_run_ms > 0
    assert a.sha256 == hashlib.sha256(tiny_onnx.read_bytes()).hexdigest()  # hashed while it streamed
    assert seen[-1] == (a.size_bytes, a.size_bytes)
    again = dev.deploy(tiny_onnx, progress=False)
    assert again.already_stored and again.bytes_sent == 0 and again.active

    r = dev.benchmark(runs=15, warmup=2, threads=1, per_node=True)
    assert r.source == "device:test-dev" and r.runs == 15 and r.threads == 1
    assert r.p50_ms <= r.p90_ms <= r.p99_ms and r.load_ms > 0 and r.peak_rss_mb > 10
    assert {n.op_type for n in r.per_node} >= {"Gather", "MatMul"}
    assert 0 < r.per_node_total_ms <= r.per_node_e2e_ms
    assert r.session_options["execution_mode"] == "sequential" and r.runtime["runner"] == "onnxruntime"

    ids = np.full((2, 9), 3, dtype=np.int64)
    supplied = dev.benchmark("tiny_text", runs=3, inputs={"input_ids": ids, "attention_mask": np.ones_like(ids)})
    assert supplied.runs == 3
    with pytest.raises(DeviceError, match="missing"):
        dev.benchmark(runs=1, inputs={"input_ids": ids})

    b = dev.deploy(tiny_onnx_b, progress=False)
    assert _active(dev) == b.sha256
    back = dev.rollback()
    assert back["active_sha256"] == a.sha256 and back["first_run_ms"] > 0
    assert {m["model_id"] for m in dev.models()} >= {"tiny_text", "tiny_text_b"}
    with pytest.raises(DeviceError, match="is active and cannot be deleted"):
        dev.delete("tiny_text")
    assert dev.delete("tiny_text_b")["sha256"] == b.sha256
    assert "tiny_text_b" not in {m["model_id"] for m in dev.models()}


def test_tflite_on_device(dev: Device, tiny_tflite: Path) -> None:
    res = dev.deploy(tiny_tflite, progress=False, activate=False)
    assert not res.active
    r = dev.benchmark("tiny_add", runs=5, warmup=1, batch_size=2)
    assert r.runtime["runner"] == "litert" and r.source == "device:test-dev"
    with pytest.raises(DeviceError, match="per-node"):
        dev.benchmark("tiny_add", runs=1, per_node=True)


def test_broken_model_never_replaces_the_active_one(dev: Device, tiny_onnx: Path, tmp_path: Path) -> None:
    dev.deploy(tiny_onnx, progress=False)
    before = _active(dev)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(DeviceError) as exc:
        dev.deploy(junk, progress=False)
    assert exc.value.code == E.LOAD_FAILED and "still active" in (exc.value.fix or "")  # type: ignore[attr-defined]
    assert _active(dev) == before


@pytest.mark.parametrize("check", ["running_sha256", "crc32"])
def test_wrong_sha_and_corrupt_chunk_rejected(dev: Device, agent: AgentProcess, tmp_path: Path, check: str) -> None:
    path = tmp_path / "blob.onnx"
    data = os.urandom(3 * 256 * 1024)
    path.write_bytes(data)
    models_before = dev.models()
    active_before = _active(dev)
    lie = Manifest.for_file(path).with_(sha256="ab" * 32)
    with pytest.raises(DeviceError) as exc:
        dev.transport.upload(path, lie, activate=True)
    assert exc.value.code == E.CHECKSUM_MISMATCH and "store is unchanged" in exc.value.problem  # type: ignore[attr-defined]

    m = wire.manifest_to_proto(Manifest.for_file(path, model_id="corrupt"))
    if check == "running_sha256":
        m.sha256 = ""  # as a bare-file deploy sends it: the digest comes with the chunks

    def integrity(piece: bytes, end: int) -> dict[str, object]:
        """What the sender computed over its file (not over what arrives)."""
        if check == "crc32":
            return {"crc32": zlib.crc32(piece)}
        return {"running_sha256": hashlib.sha256(data[:end]).digest()}

    def chunks() -> Iterator[artifact_pb2.UploadChunk]:
        piece = data[:262144]
        yield artifact_pb2.UploadChunk(schema_version=SCHEMA_VERSION, upload_id=f"c-{check}", offset=0, data=piece,
                                       manifest=m, activate=True, **integrity(piece, 262144))  # type: ignore[arg-type]
        bad = bytes([data[262144] ^ 1]) + data[262145:524288]  # one bit flipped in transit
        yield artifact_pb2.UploadChunk(schema_version=SCHEMA_VERSION, upload_id=f"c-{check}", offset=262144, data=bad,
                                       **integrity(data[262144:524288], 524288))  # type: ignore[arg-type]

    ch, stub = _stub(agent.url)
    with ch:
        res = stub.Upload(chunks(), timeout=30)
        state = stub.QueryUpload(artifact_pb2.QueryUploadRequest(schema_version=SCHEMA_VERSION,
                                                                 upload_id=f"c-{check}"), timeout=10)
    assert not res.status.ok and res.status.code == E.CHUNK_CORRUPT and "offset 262144" in res.status.message
    assert ("running sha256" if check == "running_sha256" else "CRC32") in res.status.message
    assert dev.models() == models_before and _active(dev) == active_before
    assert state.committed_offset == 262144  # the good chunk before it is kept: a retry resumes there


def test_schema_mismatch_is_a_clear_error(agent: AgentProcess) -> None:
    ch, stub = _stub(agent.url)
    with ch:
        res = stub.ListModels(agent_pb2.ListModelsRequest(schema_version="2.0"), timeout=10)
        bench = stub.Benchmark(benchmark_pb2.BenchmarkRequest(), timeout=10)  # no schema_version at all
    assert res.status.code == E.SCHEMA_MISMATCH and "major differs" in res.status.message and res.status.fix
    assert bench.status.code == E.SCHEMA_MISMATCH and res.schema_version == SCHEMA_VERSION


def test_benchmark_and_deploy_together(dev: Device, agent: AgentProcess, tiny_onnx: Path, tmp_path: Path) -> None:
    dev.deploy(tiny_onnx, progress=False)
    big = tmp_path / "big.onnx"
    big.write_bytes(os.urandom(6 * 1024 * 1024))  # stored only (activate=False): the bytes need not be a model
    errors: list[BaseException] = []

    def bench() -> None:
        try:
            with devicefit.connect(agent.url) as d2:
                assert d2.benchmark(runs=30, threads=1).runs == 30
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=bench)
    t.start()
    res = dev.deploy(big, progress=False, activate=False)
    t.join(120)
    assert not errors and not t.is_alive()
    assert res.bytes_sent == 6 * 1024 * 1024


def test_unreachable_agent_and_bad_arguments(tmp_path: Path, dev: Device, tiny_onnx: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DeviceError) as exc:
        devicefit.connect(f"grpc://127.0.0.1:{port}", connect_timeout=1.0)
    assert f"agent unreachable at grpc://127.0.0.1:{port}" in exc.value.problem
    assert "devicefit agent serve --grpc" in (exc.value.fix or "")
    with pytest.raises(UserInputError, match="no transport handles"):
        devicefit.connect("http://x:1")
    with pytest.raises(UserInputError, match="256 KiB-1 MiB"):
        dev.deploy(tiny_onnx, progress=False, chunk_size=2 * 1024 * 1024)


def test_agent_side_imports_no_torch() -> None:
    code = (
        "import sys, devicefit.agent.server, devicefit.agent.service, devicefit.device, devicefit.cli.agent;"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_agent_tunes_glibc_malloc_for_chunk_buffers() -> None:
    """serve_forever keeps received chunk buffers in the heap (see tune_allocator); in a child: process-wide."""
    import platform

    code = "from devicefit.agent.server import tune_allocator; print(tune_allocator())"
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True, text=True)
    assert out.stdout.strip() == str(platform.libc_ver()[0] == "glibc")


def test_a_resumed_artifact_upload_whose_stored_prefix_differs_starts_over(
    dev: Device, agent: AgentProcess, tmp_path: Path
) -> None:
    """An Artifact's chunks carry no running_sha256 (its manifest names the digest): a stored prefix that went
    bad is caught by the agent's final sha256 check, and the SDK sends the file again from offset 0."""
    from devicefit.artifact import Artifact
    from devicefit.protos.chunks import FileChunks

    chunk = 256 * 1024
    path = tmp_path / "resumed.onnx"
    data = os.urandom(3 * chunk + 100)
    path.write_bytes(data)
    m = Manifest.for_file(path, model_id="resumed")

    def first_two() -> Iterator[bytes]:  # an interrupted deploy: 2 chunks, then the stream ends
        stream = FileChunks(path, size=len(data), upload_id=m.sha256, schema_version=SCHEMA_VERSION,
                            manifest=wire.manifest_to_proto(m), chunk_size=chunk, running_sha256=False)
        for i, msg in enumerate(stream):
            if i == 2:
                return
            yield msg

    ch = grpc.insecure_channel(agent.url.removeprefix("grpc://"))
    with ch:
        upload = ch.stream_unary("/devicefit.v1.DeviceAgent/Upload", request_serializer=None,
                                 response_deserializer=artifact_pb2.UploadResult.FromString)
        res = upload(first_two(), timeout=30)
    assert res.status.code == E.INCOMPLETE and res.committed_offset == 2 * chunk
    part = agent.store / "uploads" / f"{m.sha256}.part"
    with open(part, "r+b") as f:  # the stored prefix goes bad (a disk error, a stray write)
        f.seek(1000)
        f.write(bytes([data[1000] ^ 1]))
    out = dev.deploy(Artifact(path, m), progress=False, activate=False)
    assert out.sha256 == m.sha256 and out.resumed_from == 2 * chunk
    # the retry sent all of it again (the failed attempt's error reply carries no byte count)
    assert out.bytes_sent == len(data) and not dev.transport.query_upload(m.sha256)["exists"]  # type: ignore[attr-defined]
    dev.delete("resumed")

"""Regression tests of the defects found probing the agent (issue #14): each failed before its fix."""

from __future__ import annotations

import errno
import gc
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from devicefit.agent import upload as upload_mod
from devicefit.agent.server import AgentServer
from devicefit.agent.service import AgentService
from devicefit.agent.store import ModelStore
from devicefit.protos import errors as E
from devicefit.protos import wire
from devicefit.protos.devicefit.v1 import agent_pb2, agent_pb2_grpc, artifact_pb2, benchmark_pb2, common_pb2
from devicefit.protos.manifest import Manifest
from devicefit.protos.schema import stamp

pytestmark = pytest.mark.timeout(120)


def _manifest_pb(path: Path, **over: Any) -> artifact_pb2.ArtifactManifest:
    pb = wire.manifest_to_proto(Manifest.for_file(path))
    for k, v in over.items():
        setattr(pb, k, v)
    return pb


def _chunks(path: Path, *, upload_id: str = "", activate: bool = False, send_data: bool = True,
            **over: Any) -> list[artifact_pb2.UploadChunk]:
    data = path.read_bytes()
    m = _manifest_pb(path, **over)
    first = artifact_pb2.UploadChunk(upload_id=upload_id or m.sha256, manifest=m, activate=activate, offset=0)
    if send_data:
        first.data = data
        first.running_sha256 = hashlib.sha256(data).digest()
    return [stamp(first)]


@pytest.fixture()
def service(tmp_path: Path, tiny_onnx: Path) -> AgentService:
    svc = AgentService(ModelStore(tmp_path / "store"), device_id="dev")
    res = svc.upload(_chunks(tiny_onnx, activate=True))
    assert res.status.ok and res.activated
    return svc


# ---- 1: a zero-byte upload must not rewrite a stored record --------------------------------------
def test_zero_byte_upload_cannot_rewrite_a_stored_record(service: AgentService, tiny_onnx: Path) -> None:
    before = service.store.active()
    assert before is not None
    fmt = wire.manifest_to_proto(before.manifest.with_(format="tflite")).format
    res = service.upload(_chunks(tiny_onnx, send_data=False, format=fmt, model_id="renamed"))
    assert not res.status.ok and res.status.code == E.INVALID_ARGUMENT
    assert "format" in res.status.message
    renamed = service.upload(_chunks(tiny_onnx, send_data=False, model_id="renamed", metrics_json='{"x": 1}'))
    assert renamed.status.ok and renamed.already_stored
    bad_id = service.upload(_chunks(tiny_onnx, send_data=False, upload_id="../../x"))
    assert bad_id.status.code == E.INVALID_ARGUMENT
    after = service.store.active()
    assert after == before  # same format, id, metrics: nothing was rewritten without a byte sent
    restarted = ModelStore(service.store.root).active()
    assert restarted is not None and restarted.manifest == before.manifest and restarted.path.exists()


# ---- 3: state is on disk before it is visible in memory ------------------------------------------
def test_failed_state_write_leaves_memory_as_disk(service: AgentService, tiny_onnx_b: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    store = service.store
    res = service.upload(_chunks(tiny_onnx_b))
    assert res.status.ok
    a_sha, b_sha = store.active_sha, res.sha256

    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("devicefit.agent.store.atomic_write", full)
    op = service.activate(stamp(agent_pb2.ActivateRequest(model_id=b_sha)))
    assert not op.status.ok
    for call in (lambda: store.set_active(b_sha), lambda: store.delete(b_sha),
                 lambda: store.add_entry(Manifest.for_file(tiny_onnx_b).with_(sha256="1" * 64))):
        with pytest.raises(OSError):
            call()
    on_disk = json.loads(store.state_path.read_text())
    assert store.active_sha == a_sha == on_disk["active"]
    assert sorted(e.sha256 for e in store.entries()) == sorted(on_disk["models"])
    assert service.loaded is not None and service.loaded.entry.sha256 == a_sha
    info = service.info(stamp(common_pb2.InfoRequest()))
    assert info.active_model_id == "tiny_text"


# ---- 4: benchmark parameters are bounded ----------------------------------------------------------
@pytest.mark.parametrize("field,value", [("batch_size", 2**32 - 1), ("threads", 2**31), ("runs", 2**32 - 1),
                                         ("warmup", 2**32 - 1)])
def test_benchmark_limits_name_field_value_and_range(service: AgentService, field: str, value: int) -> None:
    req = benchmark_pb2.BenchmarkRequest(has_warmup=True, **{field: value})
    rep = service.benchmark(stamp(req))
    assert not rep.status.ok and rep.status.code == E.INVALID_ARGUMENT, rep.status
    assert field in rep.status.message and str(value) in rep.status.message and ".." in rep.status.message


# ---- 5: partial uploads are cleaned, space is checked, leftovers do not break writes -------------
def test_rejected_first_chunk_leaves_no_partial_upload(service: AgentService, tiny_onnx_b: Path) -> None:
    chunks = _chunks(tiny_onnx_b, upload_id="up-1")
    chunks[0].running_sha256 = b"\0" * 32  # fails its integrity check
    res = service.upload(chunks)
    assert res.status.code == E.CHUNK_CORRUPT
    assert sorted(p.name for p in service.store.uploads_dir.iterdir()) == []


def test_stale_partial_uploads_are_collected_at_start(tmp_path: Path) -> None:
    root = tmp_path / "store"
    ModelStore(root)
    old = time.time() - 3 * 86400
    for name in ("stale.part", "stale.json", "fresh.part"):
        (root / "uploads" / name).write_bytes(b"x")
    for name in ("stale.part", "stale.json"):
        os.utime(root / "uploads" / name, (old, old))
    (root / "blobs" / ("ab" * 32 + ".onnx")).write_bytes(b"orphan")  # no record names it
    ModelStore(root, stale_upload_s=86400)
    assert sorted(p.name for p in (root / "uploads").iterdir()) == ["fresh.part"]
    assert list((root / "blobs").iterdir()) == []


def test_upload_larger_than_quota_or_free_space_is_refused(tmp_path: Path, tiny_onnx: Path) -> None:
    svc = AgentService(ModelStore(tmp_path / "s", max_store_bytes=1024), device_id="d")
    res = svc.upload(_chunks(tiny_onnx, upload_id="big", send_data=False, sha256="", size_bytes=4 * 1024**3))
    assert res.status.code == E.RESOURCE_EXHAUSTED and "size_bytes" in res.status.message
    assert list(svc.store.uploads_dir.iterdir()) == []


def test_failed_atomic_write_leaves_no_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(upload_mod.os, "fsync", full)
    with pytest.raises(OSError):
        upload_mod.atomic_write(tmp_path / "state.json", b"{}")
    assert list(tmp_path.iterdir()) == []


# ---- 6: bounded responses and errors -------------------------------------------------------------
def test_list_models_stays_under_the_message_limit(service: AgentService, tiny_onnx: Path) -> None:
    big = {"blob": "x" * (2_500_000)}
    for sha in ("1" * 64, "2" * 64):  # records from an older agent that accepted them
        service.store.add_entry(Manifest.for_file(tiny_onnx).with_(sha256=sha, metrics=big))
        (service.store.blobs_dir / f"{sha}.onnx").write_bytes(b"x")
    res = service.list_models(stamp(agent_pb2.ListModelsRequest()))
    assert res.status.ok and len(res.models) == 3 and res.ByteSize() < 1024 * 1024


def test_oversize_json_field_is_refused_naming_it(service: AgentService, tiny_onnx_b: Path) -> None:
    res = service.upload(_chunks(tiny_onnx_b, metrics_json=json.dumps({"blob": "x" * 2_500_000})))
    assert res.status.code == E.INVALID_ARGUMENT and "metrics_json" in res.status.message
    assert res.ByteSize() < 4096


def test_errors_do_not_echo_whole_fields(service: AgentService, tiny_onnx_b: Path) -> None:
    res = service.upload(_chunks(tiny_onnx_b, model_id="a" * 300_000))
    assert res.status.code == E.INVALID_ARGUMENT and res.ByteSize() < 4096


# ---- 7: malformed input is INVALID_ARGUMENT, never INTERNAL --------------------------------------
@pytest.mark.parametrize("field,value", [("metrics_json", "[1, 2]"), ("plan_summary_json", '"text"'),
                                         ("metrics_json", "3")])
def test_non_object_json_is_invalid_argument(service: AgentService, tiny_onnx_b: Path, field: str, value: str) -> None:
    res = service.upload(_chunks(tiny_onnx_b, **{field: value}))
    assert res.status.code == E.INVALID_ARGUMENT and field in res.status.message, res.status


@pytest.mark.parametrize("shape", [[0, -1], [-2, -3], [2**62, 2**62], [1] * 64])
def test_bad_tensor_shapes_are_invalid_argument(service: AgentService, shape: list[int]) -> None:
    t = common_pb2.Tensor(name="input_ids", dtype="int64", shape=shape, data=b"")
    rep = service.benchmark(stamp(benchmark_pb2.BenchmarkRequest(runs=1, inputs=[t])))
    assert rep.status.code == E.INVALID_ARGUMENT, rep.status


def test_onnxruntime_runner_failing_early_has_a_quiet_destructor(monkeypatch: pytest.MonkeyPatch, tiny_onnx: Path) -> None:
    from devicefit.agent.runners.onnxruntime_runner import OnnxRuntimeRunner
    from devicefit.errors import UserInputError

    seen: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    with pytest.raises(UserInputError):
        OnnxRuntimeRunner(tiny_onnx, threads=-1)
    gc.collect()
    assert [u.exc_type for u in seen] == []


# ---- 2 + 4: bounded pools, idle streams, cancelled benchmarks (a real gRPC server on loopback) ----
@pytest.fixture()
def server(service: AgentService) -> Iterator[AgentServer]:
    srv = AgentServer(service, "127.0.0.1:0", workers=8, idle_timeout_s=2.0)
    try:
        yield srv
    finally:
        srv.stop(grace=0.5)


def test_silent_upload_streams_cannot_starve_health(server: AgentServer, tiny_onnx_b: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = f"127.0.0.1:{server.port}"
    chans = [grpc.insecure_channel(target) for _ in range(16)]
    release = threading.Event()
    first = _chunks(tiny_onnx_b, upload_id="silent", send_data=False)[0]

    def silent(i: int) -> Iterator[artifact_pb2.UploadChunk]:
        c = artifact_pb2.UploadChunk()
        c.CopyFrom(first)
        c.upload_id = f"silent-{i}"
        yield c
        release.wait(60)

    futs = [agent_pb2_grpc.DeviceAgentStub(ch).Upload.future(silent(i), timeout=60) for i, ch in enumerate(chans)]
    try:
        time.sleep(1.0)  # every stream has sent its first chunk and gone quiet
        with grpc.insecure_channel(target) as ch:
            for _ in range(3):
                assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1.0).status == 1
                info = agent_pb2_grpc.DeviceAgentStub(ch).GetInfo(stamp(common_pb2.InfoRequest()), timeout=5.0)
                assert info.status.ok
        # the idle timeout (2 s) ends the silent streams: each is answered (refused or timed out), none hangs
        for f in futs:
            try:
                res = f.result(timeout=30)
                assert not res.status.ok
            except grpc.RpcError as exc:
                assert exc.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED,
                                      grpc.StatusCode.RESOURCE_EXHAUSTED), exc
    finally:
        release.set()
        for ch in chans:
            ch.close()


def test_benchmark_stops_when_its_client_leaves(server: AgentServer, service: AgentService) -> None:
    ids = np.full((16, 512), 3, dtype=np.int64)
    inputs = [wire.tensor_to_proto("input_ids", ids), wire.tensor_to_proto("attention_mask", np.ones_like(ids))]
    target = f"127.0.0.1:{server.port}"
    with grpc.insecure_channel(target) as ch:
        stub = agent_pb2_grpc.DeviceAgentStub(ch)
        fut = stub.Benchmark.future(stamp(benchmark_pb2.BenchmarkRequest(runs=10000, inputs=inputs)), timeout=300)
        time.sleep(1.5)  # the benchmark is running
        fut.cancel()
        # the agent notices and frees the benchmark slot: a 1-run benchmark goes through long before
        # 10000 runs (each > 1 ms here) could have finished
        rep = stub.Benchmark(stamp(benchmark_pb2.BenchmarkRequest(runs=1)), timeout=8.0)
        assert rep.status.ok

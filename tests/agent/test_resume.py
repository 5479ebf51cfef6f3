"""SIGKILL the agent in the middle of an upload, restart it: the old model is still active and the upload
resumes from the committed offset (only the missing bytes travel) — for an upload whose manifest names the
sha256 (an Artifact) and for a bare file hashed while it streams (the upload id then names the file)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import devicefit
from devicefit.agent.launch import spawn_agent
from devicefit.artifact import Artifact
from devicefit.protos import wire
from devicefit.protos.chunks import FileChunks
from devicefit.protos.devicefit.v1 import agent_pb2_grpc, artifact_pb2
from devicefit.protos.manifest import Manifest
from devicefit.protos.schema import SCHEMA_VERSION
from devicefit.transport.grpc_transport import file_upload_id

CHUNK = 256 * 1024


def _load_conftest_writer() -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location("_agent_conftest", Path(__file__).with_name("conftest.py"))
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.timeout(300)
@pytest.mark.parametrize("flow", ["manifest", "streamed"])
def test_sigkill_mid_upload_then_resume(tmp_path: Path, tiny_onnx: Path, flow: str) -> None:
    big = tmp_path / "big_text.onnx"
    _load_conftest_writer().write_tiny_onnx(big, vocab=50_000, hidden=64)  # type: ignore[attr-defined]
    size = big.stat().st_size
    assert size > 12_000_000
    manifest = Manifest.for_file(big)
    pb_manifest = wire.manifest_to_proto(manifest)
    if flow == "manifest":  # what deploying an Artifact sends: the manifest names the sha256, id = sha256
        upload_id = manifest.sha256
    else:  # what deploying a bare file sends: no sha256 up front, id = the file's name (see upload_file)
        upload_id = file_upload_id(big)
        pb_manifest.sha256 = ""
    store = tmp_path / "store"
    args = ("--commit-every-mib", "1")

    agent = spawn_agent(store, device_id="crashy", extra_args=args)
    try:
        with devicefit.connect(agent.url) as dev:
            old = dev.deploy(tiny_onnx, progress=False)
        channel = grpc.insecure_channel(agent.url.removeprefix("grpc://"))
        probe_ch = grpc.insecure_channel(agent.url.removeprefix("grpc://"))
        probe = agent_pb2_grpc.DeviceAgentStub(probe_ch)
        upload = channel.stream_unary("/devicefit.v1.DeviceAgent/Upload", request_serializer=None,
                                      response_deserializer=artifact_pb2.UploadResult.FromString)

        def chunks() -> Iterator[bytes]:
            stream = FileChunks(big, size=size, upload_id=upload_id, schema_version=SCHEMA_VERSION,
                                manifest=pb_manifest, chunk_size=CHUNK, activate=True)
            for msg in stream:  # the SDK's own chunk encoder: send 4 MiB of ~12.8 MB
                yield msg
                if stream.sent >= 4 * 1024 * 1024:
                    break
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # wait until the agent has committed something, then crash it
                st = probe.QueryUpload(artifact_pb2.QueryUploadRequest(schema_version=SCHEMA_VERSION,
                                                                       upload_id=upload_id), timeout=10)
                if st.committed_offset >= 2 * 1024 * 1024:
                    break
                time.sleep(0.05)
            agent.kill()

        with pytest.raises(grpc.RpcError) as exc:
            upload(chunks(), timeout=120)
        assert exc.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)
        channel.close()
        probe_ch.close()
        assert agent.proc.wait(30) == -9  # the generator's thread killed it; wait for the reap
    finally:
        agent.stop()

    with spawn_agent(store, device_id="crashy", extra_args=args) as agent2, devicefit.connect(agent2.url) as dev:
        listing = dev.transport.list_models()
        assert listing["active_sha256"] == old.sha256  # the previous model is still active
        assert dev.info()["active_model_id"] == "tiny_text"
        state = dev.transport.query_upload(upload_id)  # type: ignore[attr-defined]
        committed = state["committed_offset"]
        assert state["exists"] and 2 * 1024 * 1024 <= committed <= 4 * 1024 * 1024
        res = dev.deploy(Artifact(big, manifest) if flow == "manifest" else big, progress=False)
        assert res.resumed_from == committed > 0
        assert res.bytes_sent == size - committed < size
        assert res.active and res.sha256 == manifest.sha256
        assert dev.transport.list_models()["previous_sha256"][-1] == old.sha256
        r = dev.benchmark(runs=3, warmup=1, threads=1)
        assert r.runs == 3 and r.source == "device:crashy"

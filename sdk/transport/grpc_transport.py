"""gRPC transport: ``grpc://HOST:PORT``.

Uploads stream the file in chunks (256 KiB-1 MiB, default 512 KiB; no message over 4 MiB), each with a
CRC32; before sending, the transport asks the agent for the committed offset of this upload (id = the
file's sha256) and resumes from there — after a dropped connection or an agent restart only the missing
bytes travel. Every call has a deadline; an unreachable agent is one clear DeviceError.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import numpy as np
from devicefit.agent import errors as E
from devicefit.agent import wire
from devicefit.agent.benchmark import BenchReport
from devicefit.agent.chunks import encode_upload_chunk
from devicefit.agent.errors import AgentError
from devicefit.agent.manifest import Manifest
from devicefit.errors import DeviceError, UserInputError
from devicefit.protos.devicefit.v1 import agent_pb2, agent_pb2_grpc, artifact_pb2, benchmark_pb2, common_pb2
from devicefit.protos.schema import SCHEMA_VERSION, stamp
from devicefit.transport import DEFAULT_CHUNK, ProgressFn, check_chunk_size

DEFAULT_PORT = 50051
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: errors after which an upload is retried from the agent's committed offset
_RETRY_CODES = {E.INCOMPLETE, E.OFFSET_MISMATCH, E.CHUNK_CORRUPT}


def parse_grpc_url(url: str) -> str:
    """"grpc://host:port" -> "host:port" (port defaults to 50051)."""
    parts = urlsplit(url)
    if parts.scheme != "grpc" or not parts.hostname:
        raise UserInputError(f"device URL {url!r} is not grpc://HOST:PORT", "pass e.g. grpc://pi.local:50051")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port or DEFAULT_PORT}"


class GrpcTransport:
    """A connection to one agent over gRPC (insecure channel; TLS comes with the security work)."""

    def __init__(
        self, url: str, *, connect_timeout: float = 5.0, timeout: float = 30.0, benchmark_timeout: float = 600.0
    ) -> None:
        self.url = url
        self.target = parse_grpc_url(url)
        self.timeout = timeout
        self.benchmark_timeout = benchmark_timeout
        self._channel = grpc.insecure_channel(
            self.target,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._stub = agent_pb2_grpc.DeviceAgentStub(self._channel)
        # Upload sends pre-serialized chunks (no protobuf copy of the payload)
        self._upload_call = self._channel.stream_unary(
            "/devicefit.v1.DeviceAgent/Upload", request_serializer=None,
            response_deserializer=artifact_pb2.UploadResult.FromString,
        )
        try:
            grpc.channel_ready_future(self._channel).result(timeout=connect_timeout)
        except grpc.FutureTimeoutError:
            self._channel.close()
            raise self._unreachable(f"no connection within {connect_timeout:g} s") from None

    # ---- plumbing ----------------------------------------------------------------------------------
    def _unreachable(self, reason: str) -> DeviceError:
        return DeviceError(
            f"agent unreachable at {self.url}: {reason}",
            f"start it with `devicefit agent serve --grpc {self.target}` on the device, or check the address",
        )

    def _call(self, method: str, request: Any, *, timeout: float | None = None) -> Any:
        try:
            response = getattr(self._stub, method)(stamp(request), timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise self._rpc_error(method, exc) from None
        wire.raise_for_status(response, where=f"{method} on {self.url}")
        return response

    def _rpc_error(self, method: str, exc: grpc.RpcError) -> DeviceError:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return self._unreachable(f"{method}: {code.name}: {details}")
        name = code.name if code is not None else "ERROR"
        return DeviceError(f"{method} on {self.url} failed: {name}: {details}", "see the agent's log")

    # ---- API ---------------------------------------------------------------------------------------
    def info(self, *, measure_throughput: bool = False) -> dict[str, Any]:
        timeout = 300.0 if measure_throughput else None
        pb = self._call("GetInfo", common_pb2.InfoRequest(measure_throughput=measure_throughput), timeout=timeout)
        return wire.info_from_proto(pb)

    def query_upload(self, upload_id: str, sha256: str = "") -> dict[str, Any]:
        pb = self._call("QueryUpload", artifact_pb2.QueryUploadRequest(upload_id=upload_id, sha256=sha256))
        return {
            "upload_id": pb.upload_id, "exists": pb.exists, "committed_offset": pb.committed_offset,
            "already_stored": pb.already_stored, "sha256": pb.manifest.sha256 if pb.HasField("manifest") else "",
        }

    def _chunks(
        self, path: Path, manifest: Manifest, upload_id: str, start: int, chunk_size: int, activate: bool,
        progress: ProgressFn | None,
    ) -> Iterator[bytes]:
        """Serialized UploadChunk messages (zero-copy encoder, see devicefit.agent.chunks)."""
        pb_manifest = wire.manifest_to_proto(manifest)
        size = manifest.size_bytes
        with open(path, "rb") as f:
            f.seek(start)
            offset, first = start, True
            while first or offset < size:
                data = f.read(min(chunk_size, size - offset)) if offset < size else b""
                chunk = encode_upload_chunk(
                    schema_version=SCHEMA_VERSION, upload_id=upload_id, offset=offset, data=data,
                    crc32=zlib.crc32(data), manifest=pb_manifest if first else None, activate=activate and first,
                )
                first = False
                offset += len(data)
                yield chunk
                if progress is not None:
                    progress(offset, size)
                if not data:
                    break

    def upload(
        self,
        path: Path,
        manifest: Manifest,
        *,
        activate: bool = True,
        chunk_size: int = DEFAULT_CHUNK,
        progress: ProgressFn | None = None,
        retries: int = 2,
    ) -> dict[str, Any]:
        chunk_size = check_chunk_size(chunk_size)
        upload_id = manifest.sha256
        first_start: int | None = None
        sent = 0
        for attempt in range(retries + 1):
            state = self.query_upload(upload_id, manifest.sha256)
            if state["already_stored"]:
                start = manifest.size_bytes
            elif state["exists"] and state["sha256"] == manifest.sha256:
                start = int(state["committed_offset"])
            else:
                start = 0
            first_start = start if first_start is None else first_start
            if progress is not None:
                progress(start, manifest.size_bytes)
            timeout = 60.0 + (manifest.size_bytes - start) / 2e6  # generous: 2 MB/s floor
            try:
                res = self._upload_call(
                    self._chunks(path, manifest, upload_id, start, chunk_size, activate, progress), timeout=timeout
                )
            except grpc.RpcError as exc:
                raise self._rpc_error("Upload", exc) from None
            sent += int(res.bytes_received)
            try:
                wire.raise_for_status(res, where=f"Upload to {self.url}")
            except AgentError as exc:
                if exc.code in _RETRY_CODES and attempt < retries:
                    continue
                raise
            return {
                "upload_id": res.upload_id, "model_id": res.model_id, "sha256": res.sha256,
                "size_bytes": res.size_bytes, "resumed_from": first_start, "bytes_sent": sent,
                "already_stored": res.already_stored, "activated": res.activated, "load_ms": res.load_ms,
                "first_run_ms": res.first_run_ms,
            }
        raise AssertionError("unreachable")  # pragma: no cover

    def benchmark(
        self,
        model_id: str | None,
        *,
        runs: int = 50,
        warmup: int = 5,
        threads: int | None = None,
        per_node: bool = False,
        batch_size: int = 1,
        inputs: Mapping[str, np.ndarray] | None = None,
    ) -> BenchReport:
        if runs < 1 or warmup < 0 or batch_size < 1 or (threads is not None and threads < 1):
            raise UserInputError(
                f"benchmark arguments runs={runs} warmup={warmup} threads={threads} batch_size={batch_size} are invalid",
                "use runs >= 1, warmup >= 0, threads >= 1 (or None), batch_size >= 1",
            )
        req = benchmark_pb2.BenchmarkRequest(
            model_id=model_id or "", runs=runs, warmup=warmup, has_warmup=True, threads=threads or 0,
            per_node=per_node, batch_size=batch_size,
            inputs=[wire.tensor_to_proto(k, np.asarray(v)) for k, v in (inputs or {}).items()],
        )
        if req.ByteSize() > MAX_MESSAGE_BYTES - 64 * 1024:
            raise UserInputError("supplied benchmark inputs exceed 4 MiB", "supply a smaller batch or let the agent generate inputs")
        return wire.report_from_proto(self._call("Benchmark", req, timeout=self.benchmark_timeout))

    def list_models(self) -> dict[str, Any]:
        pb = self._call("ListModels", agent_pb2.ListModelsRequest())
        return {
            "models": [wire.entry_from_proto(m) for m in pb.models],
            "active_sha256": pb.active_sha256 or None,
            "previous_sha256": list(pb.previous_sha256),
        }

    def activate(self, model_id: str) -> dict[str, Any]:
        return wire.op_result_to_dict(self._call("Activate", agent_pb2.ActivateRequest(model_id=model_id), timeout=120))

    def rollback(self) -> dict[str, Any]:
        return wire.op_result_to_dict(self._call("Rollback", agent_pb2.RollbackRequest(), timeout=120))

    def delete(self, model_id: str) -> dict[str, Any]:
        return wire.op_result_to_dict(self._call("Delete", agent_pb2.DeleteRequest(model_id=model_id)))

    def health(self) -> str:
        """grpc.health.v1 status of the DeviceAgent service ("SERVING", ...)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            res = stub.Check(health_pb2.HealthCheckRequest(service="devicefit.v1.DeviceAgent"), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self._rpc_error("Health.Check", exc) from None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(res.status))

    def close(self) -> None:
        self._channel.close()

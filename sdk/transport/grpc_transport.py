"""gRPC transport: ``grpc://HOST:PORT``.

Uploads stream the file in chunks (256 KiB-1 MiB, default 512 KiB; no message over 4 MiB). A bare file is
hashed as it is read: each chunk carries the running sha256 of the file so far, which the agent checks against
its own (it hashes everything anyway), so a corrupted chunk is rejected where it happens at no extra cost on
the device. A manifest that names the sha256 (an Artifact) is not hashed again here: the agent hashes what it
receives and rejects the upload, leaving its store unchanged, unless it matches. Before sending, the
transport asks the agent for the committed offset of this upload (id = the file's sha256, or a name of the
file when its sha256 is not known yet: see :meth:`GrpcTransport.upload_file`) and resumes from there — after
a dropped connection or an agent restart only the missing bytes travel (a resumed Artifact upload whose
stored prefix turns out wrong is sent again from 0). Every call has a deadline; an unreachable agent is one
clear DeviceError.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import numpy as np

from devicefit.errors import DeviceError, UserInputError
from devicefit.protos import errors as E
from devicefit.protos import wire
from devicefit.protos.chunks import FileChunks, encode_upload_chunk
from devicefit.protos.devicefit.v1 import agent_pb2, agent_pb2_grpc, artifact_pb2, benchmark_pb2, common_pb2
from devicefit.protos.errors import AgentError
from devicefit.protos.manifest import Manifest, default_model_id, format_for_path, sha256_file, utc_now
from devicefit.protos.report import BenchReport
from devicefit.protos.schema import SCHEMA_VERSION, stamp
from devicefit.transport import DEFAULT_CHUNK, ProgressFn, check_chunk_size

DEFAULT_PORT = 50051
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: options of the channel to an agent (bench/transport.py gives its raw baseline the same)
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
#: errors after which an upload is retried from the agent's committed offset
_RETRY_CODES = {E.INCOMPLETE, E.OFFSET_MISMATCH, E.CHUNK_CORRUPT}
#: validates a draft manifest whose sha256 the stream will deliver; never sent
_DRAFT_SHA = "0" * 64


def _file_size(path: Path) -> int:
    if not path.is_file():
        raise UserInputError(f"model file {str(path)!r} does not exist", "pass the path of an .onnx or .tflite file")
    return path.stat().st_size


def file_upload_id(path: Path) -> str:
    """An upload id naming this version of the file on this host (path, device, inode, size, mtime, ctime):
    the same until the file changes, so an interrupted upload of it resumes."""
    st = path.stat()
    key = "\0".join(str(x) for x in (socket.gethostname(), os.path.realpath(path), st.st_dev, st.st_ino, st.st_size,
                                     st.st_mtime_ns, st.st_ctime_ns))
    return "file-" + hashlib.sha256(key.encode()).hexdigest()[:40]


def parse_grpc_url(url: str) -> str:
    """"grpc://host:port" -> "host:port" (port defaults to 50051)."""
    parts = urlsplit(url)
    if parts.scheme not in ("grpc", "grpcs") or not parts.hostname:
        raise UserInputError(f"device URL {url!r} is not grpc://HOST:PORT", "pass e.g. grpc://pi.local:50051")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port or DEFAULT_PORT}"


class GrpcTransport:
    """A connection to one agent over gRPC (insecure channel; TLS comes with the security work)."""

    def __init__(
        self, url: str, *, connect_timeout: float = 5.0, timeout: float = 30.0, benchmark_timeout: float = 600.0,
        token: str | None = None, tls_ca: str | None = None, tls_cert: str | None = None, tls_key: str | None = None,
        tls_server_name: str | None = None,
    ) -> None:
        """``grpcs://`` connects over TLS (``tls_cert``/``tls_key``: a client certificate for mutual TLS);
        ``token``: the agent's bearer token. Each defaults to its DEVICEFIT_* environment variable."""
        from devicefit.transport.grpc_auth import open_channel

        self.url = url
        self.target = parse_grpc_url(url)
        self.timeout = timeout
        self.benchmark_timeout = benchmark_timeout
        self._channel = open_channel(
            self.target, tls=url.startswith("grpcs://"), options=CHANNEL_OPTIONS, token=token, tls_ca=tls_ca,
            tls_cert=tls_cert, tls_key=tls_key, tls_server_name=tls_server_name,
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

    #: a BUSY answer is retried this many times, after busy_backoff_s, doubling
    busy_retries = 4
    busy_backoff_s = 0.5

    def _call(self, method: str, request: Any, *, timeout: float | None = None) -> Any:
        delay = self.busy_backoff_s
        for attempt in range(self.busy_retries + 1):
            try:
                response = getattr(self._stub, method)(stamp(request), timeout=timeout or self.timeout)
            except grpc.RpcError as exc:
                raise self._rpc_error(method, exc) from None
            if attempt < self.busy_retries and response.HasField("status") and response.status.code == E.BUSY:
                time.sleep(delay)  # the agent is at its limit for this kind of request: it asked to retry
                delay *= 2
                continue
            break
        wire.raise_for_status(response, where=f"{method} on {self.url}")
        return response

    def _rpc_error(self, method: str, exc: grpc.RpcError) -> DeviceError:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:  # it answered before: busy or slow, not gone
            return DeviceError(
                f"{method} on {self.url} timed out ({details}): the agent is busy or the request takes longer",
                "retry later, or pass a longer timeout (e.g. devicefit.connect(url, timeout=...))",
            )
        if code == grpc.StatusCode.UNAVAILABLE:
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

    def _stream(
        self, path: Path, pb_manifest: artifact_pb2.ArtifactManifest, upload_id: str, start: int, size: int,
        chunk_size: int, activate: bool, progress: ProgressFn | None,
    ) -> tuple[artifact_pb2.UploadResult, FileChunks | None]:
        """One Upload stream from ``start``; ``start == size`` sends the manifest alone (nothing left to send)."""
        chunks: FileChunks | None = None
        if start >= size:
            msgs: Iterable[bytes] = [
                encode_upload_chunk(schema_version=SCHEMA_VERSION, upload_id=upload_id, offset=size, data=b"",
                                    manifest=pb_manifest, activate=activate)
            ]
        else:
            chunks = FileChunks(path, size=size, upload_id=upload_id, schema_version=SCHEMA_VERSION,
                                manifest=pb_manifest, start=start, chunk_size=chunk_size, activate=activate,
                                progress=progress, running_sha256=not pb_manifest.sha256)
            msgs = chunks
        timeout = 60.0 + (size - start) / 2e6  # generous: 2 MB/s floor
        try:
            res = self._upload_call(iter(msgs), timeout=timeout)
        except grpc.RpcError as exc:
            raise self._rpc_error("Upload", exc) from None
        return res, chunks

    def _upload(
        self, path: Path, pb_manifest: artifact_pb2.ArtifactManifest, upload_id: str, *, activate: bool,
        chunk_size: int, progress: ProgressFn | None, retries: int, state: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Upload, resuming from the agent's committed offset; retried from there after a broken stream.
        ``state``: the QueryUpload answer for ``upload_id`` when the caller just asked."""
        chunk_size = check_chunk_size(chunk_size)
        sha, size = pb_manifest.sha256, int(pb_manifest.size_bytes)
        first_start: int | None = None
        sent = 0
        for attempt in range(retries + 1):
            if state is None or attempt > 0:
                state = self.query_upload(upload_id, sha)
            if sha and state["already_stored"]:
                start = size
            elif state["exists"] and state["sha256"] == sha:  # both "" for a digest the stream delivers
                start = int(state["committed_offset"])
            else:
                start = 0
            first_start = start if first_start is None else first_start
            if progress is not None:
                progress(start, size)
            res, chunks = self._stream(path, pb_manifest, upload_id, start, size, chunk_size, activate, progress)
            sent += int(res.bytes_received)
            try:
                wire.raise_for_status(res, where=f"Upload to {self.url}")
            except AgentError as exc:
                if exc.code in _RETRY_CODES and attempt < retries:
                    continue
                if exc.code == E.BUSY and attempt < retries:  # too many uploads at once on the agent
                    time.sleep(self.busy_backoff_s * 2**attempt)
                    continue
                if exc.code == E.CHECKSUM_MISMATCH and sha and 0 < start < size and attempt < retries:
                    # a resumed upload of a known digest (chunks without running_sha256): the prefix the agent
                    # held may be what differs; it discarded the upload, so the retry sends the file from 0
                    continue
                raise
            expected = sha or (chunks.digest.hex() if chunks is not None and chunks.digest is not None else "")
            if expected and res.sha256 != expected:
                raise DeviceError(
                    f"the agent at {self.url} stored sha256 {res.sha256} for {path}, but "
                    + (f"its manifest names {expected}" if sha else f"it hashed to {expected} as it was sent"),
                    "redeploy; report this if it persists",
                )
            return {
                "upload_id": res.upload_id, "model_id": res.model_id, "sha256": res.sha256,
                "size_bytes": res.size_bytes, "resumed_from": first_start, "bytes_sent": sent,
                "already_stored": res.already_stored, "activated": res.activated, "load_ms": res.load_ms,
                "first_run_ms": res.first_run_ms,
            }
        raise AssertionError("unreachable")  # pragma: no cover

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
        """Upload ``path`` described by ``manifest`` (sha256 known: nothing is sent when the agent has it)."""
        return self._upload(
            Path(path), wire.manifest_to_proto(manifest), manifest.sha256, activate=activate, chunk_size=chunk_size,
            progress=progress, retries=retries,
        )

    def upload_file(
        self,
        path: str | Path,
        *,
        model_id: str | None = None,
        version: str = "1",
        activate: bool = True,
        chunk_size: int = DEFAULT_CHUNK,
        progress: ProgressFn | None = None,
        retries: int = 2,
    ) -> dict[str, Any]:
        """Upload a model file whose sha256 is not known yet, hashing it while it streams (one pass over the
        file): the manifest leaves the sha256 to the chunks' ``running_sha256``. The upload id names the file
        (path, size, inode, times) so an interrupted upload resumes; when the agent reports that this id
        already became a stored blob, the file is hashed and, if it still matches, nothing is sent."""
        p = Path(path)
        chunk_size = check_chunk_size(chunk_size)
        size = _file_size(p)
        draft = Manifest(
            model_id=model_id or default_model_id(p), format=format_for_path(p), size_bytes=size,
            sha256=_DRAFT_SHA, version=version, created_at=utc_now(), file_name=p.name,
        )
        upload_id = file_upload_id(p)
        state = self.query_upload(upload_id)
        if state["already_stored"] and state["sha256"] and sha256_file(p) == state["sha256"]:
            return self.upload(p, draft.with_(sha256=state["sha256"]), activate=activate, chunk_size=chunk_size,
                               progress=progress, retries=retries)
        pb = wire.manifest_to_proto(draft)
        pb.sha256 = ""  # the stream delivers it
        return self._upload(p, pb, upload_id, activate=activate, chunk_size=chunk_size, progress=progress,
                            retries=retries, state=state)

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
        min_seconds: float = 0.0,
    ) -> BenchReport:
        if runs < 1 or warmup < 0 or batch_size < 1 or (threads is not None and threads < 1) or not min_seconds >= 0:
            raise UserInputError(
                f"benchmark arguments runs={runs} warmup={warmup} threads={threads} batch_size={batch_size} "
                f"min_seconds={min_seconds} are invalid",
                "use runs >= 1, warmup >= 0, threads >= 1 (or None), batch_size >= 1, min_seconds >= 0",
            )
        req = benchmark_pb2.BenchmarkRequest(
            model_id=model_id or "", runs=runs, warmup=warmup, has_warmup=True, threads=threads or 0,
            per_node=per_node, batch_size=batch_size, min_seconds=min_seconds,
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

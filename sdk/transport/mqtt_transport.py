"""One device behind a broker, as a :class:`~devicefit.transport.Transport`:
``devicefit.connect("mqtt://broker:1883/<fleet>/<device-id>")`` (``mqtts://`` for TLS; ``user:pass@`` for
credentials; ``?protocol=5`` for MQTT 5). The same devicefit.v1 messages and Python objects as gRPC; an upload
is a fan-out transfer to one device (see :mod:`devicefit.transport.mqtt_fanout`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from devicefit.errors import DeviceError, UserInputError
from devicefit.protos import topics, wire
from devicefit.protos.devicefit.v1 import agent_pb2, artifact_pb2, benchmark_pb2, common_pb2
from devicefit.protos.manifest import Manifest
from devicefit.protos.report import BenchReport
from devicefit.transport import DEFAULT_CHUNK, ProgressFn
from devicefit.transport.mqtt_client import MqttHost
from devicefit.transport.mqtt_fanout import CHUNK, send_artifact

#: one request may carry supplied benchmark inputs; brokers accept far more, the agent bounds it like gRPC
MAX_REQUEST_BYTES = 4 * 1024 * 1024


class MqttTransport:
    """A connection to one agent through an MQTT broker."""

    def __init__(self, url: str, *, connect_timeout: float = 10.0, timeout: float = 30.0,
                 benchmark_timeout: float = 600.0, host: MqttHost | None = None) -> None:
        parsed = topics.BrokerUrl.parse(url)
        if not parsed.fleet or not parsed.device_id:
            raise UserInputError(f"device URL {url!r} names no fleet and device",
                                 "use mqtt://HOST:PORT/FLEET/DEVICE-ID")
        self.url, self.device_id, self.timeout, self.benchmark_timeout = url, parsed.device_id, timeout, benchmark_timeout
        self._own = host is None
        self.host = host or MqttHost(url, connect_timeout=connect_timeout)

    def _call(self, method: str, req: Any, resp: Any, *, timeout: float | None = None) -> Any:
        pb = self.host.request(self.device_id, method, req, resp, timeout=timeout or self.timeout)
        wire.raise_for_status(pb, where=f"{method} on {self.url}")
        return pb

    def info(self, *, measure_throughput: bool = False) -> dict[str, Any]:
        pb = self._call("GetInfo", common_pb2.InfoRequest(measure_throughput=measure_throughput), common_pb2.DeviceInfo,
                        timeout=300.0 if measure_throughput else None)
        return wire.info_from_proto(pb)

    def query_upload(self, upload_id: str, sha256: str = "") -> dict[str, Any]:
        pb = self._call("QueryUpload", artifact_pb2.QueryUploadRequest(upload_id=upload_id, sha256=sha256),
                        artifact_pb2.UploadState)
        return {"upload_id": pb.upload_id, "exists": pb.exists, "committed_offset": pb.committed_offset,
                "already_stored": pb.already_stored}

    def upload(self, path: Path, manifest: Manifest, *, activate: bool = True, chunk_size: int = DEFAULT_CHUNK,
               progress: ProgressFn | None = None) -> dict[str, Any]:
        """Upload ``path`` (resuming from what the agent holds); chunks are capped at 256 KiB on MQTT."""
        sent_before = self.host.bytes_published
        o = send_artifact(self.host, [self.device_id], path, manifest, activate=activate,
                          chunk_size=min(chunk_size, CHUNK), timeout=self.timeout, progress=progress)[self.device_id]
        if not o.ok:
            raise DeviceError(f"upload of {Path(path).name} to {self.url} failed: {o.error}", "retry; it resumes")
        return {
            "upload_id": f"fanout-{manifest.sha256[:48]}", "model_id": manifest.model_id, "sha256": o.sha256,
            "size_bytes": manifest.size_bytes, "resumed_from": o.resumed_from,
            "bytes_sent": self.host.bytes_published - sent_before, "already_stored": o.already_stored,
            "activated": o.activated, "load_ms": o.load_ms, "first_run_ms": 0.0,
        }

    def benchmark(self, model_id: str | None, *, runs: int = 50, warmup: int = 5, threads: int | None = None,
                  per_node: bool = False, batch_size: int = 1,
                  inputs: Mapping[str, np.ndarray] | None = None, min_seconds: float = 0.0) -> BenchReport:
        req = benchmark_pb2.BenchmarkRequest(
            model_id=model_id or "", runs=runs, warmup=warmup, has_warmup=True, threads=threads or 0,
            per_node=per_node, batch_size=batch_size, min_seconds=min_seconds,
            inputs=[wire.tensor_to_proto(k, np.asarray(v)) for k, v in (inputs or {}).items()],
        )
        if req.ByteSize() > MAX_REQUEST_BYTES:
            raise UserInputError("supplied benchmark inputs exceed 4 MiB", "supply a smaller batch")
        return wire.report_from_proto(self._call("Benchmark", req, benchmark_pb2.BenchmarkReport,
                                                 timeout=self.benchmark_timeout))

    def list_models(self) -> dict[str, Any]:
        pb = self._call("ListModels", agent_pb2.ListModelsRequest(), agent_pb2.ModelList)
        return {"models": [wire.entry_from_proto(m) for m in pb.models], "active_sha256": pb.active_sha256 or None,
                "previous_sha256": list(pb.previous_sha256)}

    def activate(self, model_id: str) -> dict[str, Any]:
        return wire.op_result_to_dict(self._call("Activate", agent_pb2.ActivateRequest(model_id=model_id),
                                                 agent_pb2.ModelOpResult, timeout=120))

    def rollback(self) -> dict[str, Any]:
        return wire.op_result_to_dict(self._call("Rollback", agent_pb2.RollbackRequest(), agent_pb2.ModelOpResult,
                                                 timeout=120))

    def delete(self, model_id: str) -> dict[str, Any]:
        return wire.op_result_to_dict(self._call("Delete", agent_pb2.DeleteRequest(model_id=model_id),
                                                 agent_pb2.ModelOpResult))

    def close(self) -> None:
        if self._own:
            self.host.close()

"""Conversions between devicefit's Python objects and the devicefit.v1 wire messages (both sides use them).

Transport-neutral: the gRPC server/transport and the MQTT client use the same functions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from devicefit.protos import errors as E
from devicefit.protos.devicefit.v1 import agent_pb2, artifact_pb2, benchmark_pb2, common_pb2
from devicefit.protos.errors import AgentError
from devicefit.protos.manifest import Manifest
from devicefit.protos.report import BenchReport, NodeTime
from devicefit.protos.schema import SCHEMA_FIX, SCHEMA_VERSION, schema_problem, stamp

_FORMAT_TO_PB = {"onnx": artifact_pb2.MODEL_FORMAT_ONNX, "tflite": artifact_pb2.MODEL_FORMAT_TFLITE}
_PB_TO_FORMAT = {v: k for k, v in _FORMAT_TO_PB.items()}


# ---- status ----------------------------------------------------------------------------------------
def ok_status() -> common_pb2.Status:
    return common_pb2.Status(schema_version=SCHEMA_VERSION, ok=True)


#: an error's message and fix are cut to this many characters (errors never echo whole request fields back)
MAX_ERROR_CHARS = 512
#: each JSON field of a manifest (plan_summary_json, metrics_json) is at most this many bytes
MAX_JSON_FIELD_BYTES = 64 * 1024
#: a tensor has at most this many dimensions
MAX_TENSOR_DIMS = 16


def clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` cut to ``limit`` characters (with a note of how much was left out)."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more characters)"


def error_status(code: str, problem: str, fix: str | None = None) -> common_pb2.Status:
    return common_pb2.Status(
        schema_version=SCHEMA_VERSION, ok=False, code=code, message=clip(problem), fix=clip(fix or "")
    )


def _json_object(field: str, text: str) -> dict[str, Any]:
    """A manifest JSON field: a JSON object of at most MAX_JSON_FIELD_BYTES, else AgentError(INVALID_ARGUMENT)."""
    if len(text.encode()) > MAX_JSON_FIELD_BYTES:
        raise AgentError(
            E.INVALID_ARGUMENT, f"manifest {field} has {len(text.encode())} bytes; valid: 0..{MAX_JSON_FIELD_BYTES}",
            "keep plan summaries and metrics small (the full report stays on the host)",
        )
    try:
        value = json.loads(text or "{}")
    except ValueError as exc:
        raise AgentError(E.INVALID_ARGUMENT, f"manifest {field} is malformed JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise AgentError(
            E.INVALID_ARGUMENT, f"manifest {field} is a JSON {type(value).__name__}, not an object", "send a JSON object"
        )
    return value


def check_schema(msg: Any) -> None:
    """Raise AgentError(SCHEMA_MISMATCH) when ``msg`` speaks another schema major."""
    problem = schema_problem(getattr(msg, "schema_version", ""))
    if problem:
        raise AgentError(E.SCHEMA_MISMATCH, f"{type(msg).__name__}: {problem}", SCHEMA_FIX)


def raise_for_status(msg: Any, *, where: str) -> None:
    """Client side: raise AgentError when a response carries a failed status (or another schema)."""
    check_schema(msg)
    if msg.HasField("status") and not msg.status.ok:
        st = msg.status
        raise AgentError(st.code or E.INTERNAL, f"{where}: {st.message}", st.fix or None)


# ---- manifest --------------------------------------------------------------------------------------
def manifest_to_proto(m: Manifest) -> artifact_pb2.ArtifactManifest:
    return stamp(
        artifact_pb2.ArtifactManifest(
            model_id=m.model_id,
            version=m.version,
            format=_FORMAT_TO_PB[m.format],
            size_bytes=int(m.size_bytes),
            sha256=m.sha256,
            signature=m.signature,
            signature_key_id=m.signature_key_id,
            plan_summary_json=json.dumps(dict(m.plan_summary), sort_keys=True, default=str),
            metrics_json=json.dumps(dict(m.metrics), sort_keys=True, default=str),
            created_at=m.created_at,
            file_name=m.file_name,
        )
    )


def manifest_from_proto(pb: artifact_pb2.ArtifactManifest) -> Manifest:
    check_schema(pb)
    if pb.format not in _PB_TO_FORMAT:
        raise AgentError(E.INVALID_ARGUMENT, f"manifest format {pb.format} is unknown", "use onnx or tflite")
    name = pb.file_name
    if name and (name in (".", "..") or "/" in name or "\\" in name or "\0" in name):
        raise AgentError(E.INVALID_ARGUMENT, clip(f"manifest file_name {name!r} is not a plain file name"),
                         "send the file's base name only")
    plan = _json_object("plan_summary_json", pb.plan_summary_json)
    metrics = _json_object("metrics_json", pb.metrics_json)
    try:
        return Manifest(
            model_id=pb.model_id,
            format=_PB_TO_FORMAT[pb.format],
            size_bytes=int(pb.size_bytes),
            sha256=pb.sha256,
            version=pb.version or "1",
            signature=bytes(pb.signature),
            signature_key_id=pb.signature_key_id,
            plan_summary=plan,
            metrics=metrics,
            created_at=pb.created_at,
            file_name=pb.file_name,
        )
    except AgentError:
        raise
    except Exception as exc:  # UserInputError from Manifest validation
        raise AgentError(E.INVALID_ARGUMENT, str(getattr(exc, "problem", exc)), getattr(exc, "fix", None)) from exc


# ---- tensors ---------------------------------------------------------------------------------------
def tensor_to_proto(name: str, arr: np.ndarray) -> common_pb2.Tensor:
    a = np.ascontiguousarray(arr)
    le = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return common_pb2.Tensor(
        schema_version=SCHEMA_VERSION, name=name, dtype=a.dtype.name, shape=list(a.shape), data=le.tobytes()
    )


def tensor_from_proto(pb: common_pb2.Tensor) -> np.ndarray:
    check_schema(pb)
    try:
        dtype = np.dtype(pb.dtype).newbyteorder("<")
        if dtype.kind not in "biuf" or dtype.itemsize == 0:
            raise TypeError("not a numeric dtype")
    except (TypeError, ValueError, SyntaxError) as exc:
        raise AgentError(E.INVALID_ARGUMENT, clip(f"tensor {pb.name!r} has unknown dtype {pb.dtype!r}")) from exc
    shape = tuple(int(s) for s in pb.shape)
    if len(shape) > MAX_TENSOR_DIMS or any(s < 0 for s in shape):
        raise AgentError(
            E.INVALID_ARGUMENT,
            clip(f"tensor {pb.name!r} has shape {list(shape)}; valid: 0..{MAX_TENSOR_DIMS} dimensions, each >= 0"),
        )
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if len(pb.data) != expected:
        raise AgentError(
            E.INVALID_ARGUMENT,
            f"tensor {pb.name!r}: {len(pb.data)} bytes do not fit dtype {pb.dtype} shape {list(shape)} ({expected} B)",
        )
    return np.frombuffer(pb.data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


# ---- benchmark -------------------------------------------------------------------------------------
def report_to_proto(r: BenchReport, *, device_id: str, model_id: str, sha256: str) -> benchmark_pb2.BenchmarkReport:
    pb = benchmark_pb2.BenchmarkReport(
        status=ok_status(),
        device_id=device_id,
        source=r.source,
        model_id=model_id,
        sha256=sha256,
        p50_ms=r.p50_ms,
        p90_ms=r.p90_ms,
        p99_ms=r.p99_ms,
        mean_ms=r.mean_ms,
        min_ms=r.min_ms,
        max_ms=r.max_ms,
        load_ms=r.load_ms,
        peak_rss_mb=r.peak_rss_mb,
        baseline_rss_mb=r.baseline_rss_mb,
        runs=r.runs,
        warmup=r.warmup,
        threads=r.threads,
        batch_size=r.batch_size,
        per_node=[benchmark_pb2.NodeTime(name=n.name, op_type=n.op_type, mean_ms=n.mean_ms) for n in r.per_node],
        per_node_e2e_ms=r.per_node_e2e_ms,
        p10_ms=r.p10_ms,
        iqr_ms=r.iqr_ms,
        timed_s=r.timed_s,
        min_seconds=r.min_seconds,
        model_memory_mb=r.model_memory_mb,
        run_memory_mb=r.run_memory_mb,
        runtime={k: str(v) for k, v in r.runtime.items()},
        session_options_json=json.dumps(r.session_options, sort_keys=True, default=str),
    )
    return stamp(pb)


def report_from_proto(pb: benchmark_pb2.BenchmarkReport) -> BenchReport:
    raise_for_status(pb, where="benchmark")
    return BenchReport(
        p50_ms=pb.p50_ms,
        p90_ms=pb.p90_ms,
        p99_ms=pb.p99_ms,
        mean_ms=pb.mean_ms,
        load_ms=pb.load_ms,
        peak_rss_mb=pb.peak_rss_mb,
        runs=pb.runs,
        threads=pb.threads,
        source=pb.source,
        per_node=[NodeTime(n.name, n.op_type, n.mean_ms) for n in pb.per_node],
        runtime=dict(pb.runtime),
        session_options=json.loads(pb.session_options_json or "{}"),
        warmup=pb.warmup,
        batch_size=pb.batch_size,
        min_ms=pb.min_ms,
        max_ms=pb.max_ms,
        baseline_rss_mb=pb.baseline_rss_mb,
        per_node_e2e_ms=pb.per_node_e2e_ms,
        p10_ms=pb.p10_ms,
        iqr_ms=pb.iqr_ms,
        timed_s=pb.timed_s,
        min_seconds=pb.min_seconds,
        model_memory_mb=pb.model_memory_mb,
        run_memory_mb=pb.run_memory_mb,
    )


# ---- device info -----------------------------------------------------------------------------------
_INFO_SCALARS = (
    "hostname", "os", "os_release", "python", "arch", "machine", "cpu_model", "cores_physical", "cores_logical",
    "max_ghz", "memory_mb", "memory_available_mb", "storage_free_mb", "storage_total_mb", "custom_kernels",
)


def info_to_proto(probe: Mapping[str, Any], **fields: Any) -> common_pb2.DeviceInfo:
    """DeviceInfo from ``probe_system()`` output (unknown keys go to extra_json) plus explicit fields."""
    pb = common_pb2.DeviceInfo(status=ok_status(), **fields)
    for key in _INFO_SCALARS:
        if probe.get(key) is not None:
            setattr(pb, key, type(getattr(pb, key))(probe[key]))
    pb.isa.extend(str(f) for f in probe.get("isa", []))
    pb.runtimes.update({k: str(v) for k, v in (probe.get("runtimes") or {}).items() if v})
    pb.custom_kernels_path = str(probe.get("custom_kernels_path") or "")
    extra = {k: v for k, v in probe.items() if k not in (*_INFO_SCALARS, "isa", "runtimes", "custom_kernels_path")}
    pb.extra_json = json.dumps(extra, sort_keys=True, default=str)
    return stamp(pb)


def info_from_proto(pb: common_pb2.DeviceInfo) -> dict[str, Any]:
    raise_for_status(pb, where="info")
    d: dict[str, Any] = {k: getattr(pb, k) for k in _INFO_SCALARS}
    d.update(
        device_id=pb.device_id,
        agent_version=pb.agent_version,
        isa=list(pb.isa),
        runtimes=dict(pb.runtimes),
        custom_kernels_path=pb.custom_kernels_path or None,
        formats=list(pb.formats),
        agent_rss_mb=pb.agent_rss_mb,
        active_model_id=pb.active_model_id or None,
    )
    if pb.HasField("throughput"):
        t = pb.throughput
        d["throughput"] = {
            "peak_gops_fp32": t.peak_gops_fp32, "peak_gops_int8": t.peak_gops_int8,
            "mem_bandwidth_gbs": t.mem_bandwidth_gbs,
        }
    extra = json.loads(pb.extra_json or "{}")
    details = extra.pop("throughput_details", None)
    if details is not None and "throughput" in d:
        d["throughput"]["details"] = details
    d.update(extra)
    return d


# ---- models ----------------------------------------------------------------------------------------
def entry_to_proto(m: Manifest, *, stored_at: str, active: bool) -> agent_pb2.ModelEntry:
    return stamp(
        agent_pb2.ModelEntry(
            model_id=m.model_id, version=m.version, sha256=m.sha256, size_bytes=m.size_bytes,
            format=_FORMAT_TO_PB[m.format], active=active, stored_at=stored_at, manifest=manifest_to_proto(m),
        )
    )


def entry_from_proto(pb: agent_pb2.ModelEntry) -> dict[str, Any]:
    return {
        "model_id": pb.model_id,
        "version": pb.version,
        "sha256": pb.sha256,
        "size_bytes": pb.size_bytes,
        "format": _PB_TO_FORMAT.get(pb.format, "unknown"),
        "active": pb.active,
        "stored_at": pb.stored_at,
        "metrics": json.loads(pb.manifest.metrics_json or "{}"),
        "plan_summary": json.loads(pb.manifest.plan_summary_json or "{}"),
    }


def op_result_to_dict(pb: agent_pb2.ModelOpResult) -> dict[str, Any]:
    return {
        "model_id": pb.model_id,
        "sha256": pb.sha256,
        "active_model_id": pb.active_model_id or None,
        "active_sha256": pb.active_sha256 or None,
        "load_ms": pb.load_ms,
        "first_run_ms": pb.first_run_ms,
    }

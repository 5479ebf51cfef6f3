from devicefit.protos.devicefit.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BenchmarkRequest(_message.Message):
    __slots__ = ("schema_version", "model_id", "runs", "warmup", "has_warmup", "threads", "per_node", "batch_size", "inputs", "min_seconds", "max_runs")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FIELD_NUMBER: _ClassVar[int]
    HAS_WARMUP_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    PER_NODE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    MIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNS_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    model_id: str
    runs: int
    warmup: int
    has_warmup: bool
    threads: int
    per_node: bool
    batch_size: int
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    min_seconds: float
    max_runs: int
    def __init__(self, schema_version: _Optional[str] = ..., model_id: _Optional[str] = ..., runs: _Optional[int] = ..., warmup: _Optional[int] = ..., has_warmup: _Optional[bool] = ..., threads: _Optional[int] = ..., per_node: _Optional[bool] = ..., batch_size: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., min_seconds: _Optional[float] = ..., max_runs: _Optional[int] = ...) -> None: ...

class NodeTime(_message.Message):
    __slots__ = ("schema_version", "name", "op_type", "mean_ms")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OP_TYPE_FIELD_NUMBER: _ClassVar[int]
    MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    name: str
    op_type: str
    mean_ms: float
    def __init__(self, schema_version: _Optional[str] = ..., name: _Optional[str] = ..., op_type: _Optional[str] = ..., mean_ms: _Optional[float] = ...) -> None: ...

class BenchmarkReport(_message.Message):
    __slots__ = ("schema_version", "status", "device_id", "source", "model_id", "sha256", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms", "load_ms", "peak_rss_mb", "baseline_rss_mb", "runs", "warmup", "threads", "batch_size", "per_node", "per_node_e2e_ms", "runtime", "session_options_json", "p10_ms", "iqr_ms", "timed_s", "min_seconds", "model_memory_mb", "run_memory_mb")
    class RuntimeEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P90_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_MS_FIELD_NUMBER: _ClassVar[int]
    LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_MB_FIELD_NUMBER: _ClassVar[int]
    BASELINE_RSS_MB_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PER_NODE_FIELD_NUMBER: _ClassVar[int]
    PER_NODE_E2E_MS_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    SESSION_OPTIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    P10_MS_FIELD_NUMBER: _ClassVar[int]
    IQR_MS_FIELD_NUMBER: _ClassVar[int]
    TIMED_S_FIELD_NUMBER: _ClassVar[int]
    MIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    RUN_MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    status: _common_pb2.Status
    device_id: str
    source: str
    model_id: str
    sha256: str
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    load_ms: float
    peak_rss_mb: float
    baseline_rss_mb: float
    runs: int
    warmup: int
    threads: int
    batch_size: int
    per_node: _containers.RepeatedCompositeFieldContainer[NodeTime]
    per_node_e2e_ms: float
    runtime: _containers.ScalarMap[str, str]
    session_options_json: str
    p10_ms: float
    iqr_ms: float
    timed_s: float
    min_seconds: float
    model_memory_mb: float
    run_memory_mb: float
    def __init__(self, schema_version: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.Status, _Mapping]] = ..., device_id: _Optional[str] = ..., source: _Optional[str] = ..., model_id: _Optional[str] = ..., sha256: _Optional[str] = ..., p50_ms: _Optional[float] = ..., p90_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., mean_ms: _Optional[float] = ..., min_ms: _Optional[float] = ..., max_ms: _Optional[float] = ..., load_ms: _Optional[float] = ..., peak_rss_mb: _Optional[float] = ..., baseline_rss_mb: _Optional[float] = ..., runs: _Optional[int] = ..., warmup: _Optional[int] = ..., threads: _Optional[int] = ..., batch_size: _Optional[int] = ..., per_node: _Optional[_Iterable[_Union[NodeTime, _Mapping]]] = ..., per_node_e2e_ms: _Optional[float] = ..., runtime: _Optional[_Mapping[str, str]] = ..., session_options_json: _Optional[str] = ..., p10_ms: _Optional[float] = ..., iqr_ms: _Optional[float] = ..., timed_s: _Optional[float] = ..., min_seconds: _Optional[float] = ..., model_memory_mb: _Optional[float] = ..., run_memory_mb: _Optional[float] = ...) -> None: ...

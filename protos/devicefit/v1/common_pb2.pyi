from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Status(_message.Message):
    __slots__ = ("schema_version", "ok", "code", "message", "fix")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIX_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    ok: bool
    code: str
    message: str
    fix: str
    def __init__(self, schema_version: _Optional[str] = ..., ok: _Optional[bool] = ..., code: _Optional[str] = ..., message: _Optional[str] = ..., fix: _Optional[str] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("schema_version", "name", "dtype", "shape", "data")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, schema_version: _Optional[str] = ..., name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Throughput(_message.Message):
    __slots__ = ("schema_version", "peak_gops_fp32", "peak_gops_int8", "mem_bandwidth_gbs")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    PEAK_GOPS_FP32_FIELD_NUMBER: _ClassVar[int]
    PEAK_GOPS_INT8_FIELD_NUMBER: _ClassVar[int]
    MEM_BANDWIDTH_GBS_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    peak_gops_fp32: float
    peak_gops_int8: float
    mem_bandwidth_gbs: float
    def __init__(self, schema_version: _Optional[str] = ..., peak_gops_fp32: _Optional[float] = ..., peak_gops_int8: _Optional[float] = ..., mem_bandwidth_gbs: _Optional[float] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ("schema_version", "measure_throughput")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    MEASURE_THROUGHPUT_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    measure_throughput: bool
    def __init__(self, schema_version: _Optional[str] = ..., measure_throughput: _Optional[bool] = ...) -> None: ...

class DeviceInfo(_message.Message):
    __slots__ = ("schema_version", "status", "device_id", "agent_version", "hostname", "os", "os_release", "python", "arch", "machine", "cpu_model", "cores_physical", "cores_logical", "max_ghz", "isa", "memory_mb", "memory_available_mb", "storage_free_mb", "storage_total_mb", "runtimes", "custom_kernels", "custom_kernels_path", "formats", "throughput", "agent_rss_mb", "active_model_id", "extra_json")
    class RuntimesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    OS_RELEASE_FIELD_NUMBER: _ClassVar[int]
    PYTHON_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    CPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    CORES_PHYSICAL_FIELD_NUMBER: _ClassVar[int]
    CORES_LOGICAL_FIELD_NUMBER: _ClassVar[int]
    MAX_GHZ_FIELD_NUMBER: _ClassVar[int]
    ISA_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    MEMORY_AVAILABLE_MB_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FREE_MB_FIELD_NUMBER: _ClassVar[int]
    STORAGE_TOTAL_MB_FIELD_NUMBER: _ClassVar[int]
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_KERNELS_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_KERNELS_PATH_FIELD_NUMBER: _ClassVar[int]
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_FIELD_NUMBER: _ClassVar[int]
    AGENT_RSS_MB_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    EXTRA_JSON_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    status: Status
    device_id: str
    agent_version: str
    hostname: str
    os: str
    os_release: str
    python: str
    arch: str
    machine: str
    cpu_model: str
    cores_physical: int
    cores_logical: int
    max_ghz: float
    isa: _containers.RepeatedScalarFieldContainer[str]
    memory_mb: int
    memory_available_mb: int
    storage_free_mb: int
    storage_total_mb: int
    runtimes: _containers.ScalarMap[str, str]
    custom_kernels: bool
    custom_kernels_path: str
    formats: _containers.RepeatedScalarFieldContainer[str]
    throughput: Throughput
    agent_rss_mb: float
    active_model_id: str
    extra_json: str
    def __init__(self, schema_version: _Optional[str] = ..., status: _Optional[_Union[Status, _Mapping]] = ..., device_id: _Optional[str] = ..., agent_version: _Optional[str] = ..., hostname: _Optional[str] = ..., os: _Optional[str] = ..., os_release: _Optional[str] = ..., python: _Optional[str] = ..., arch: _Optional[str] = ..., machine: _Optional[str] = ..., cpu_model: _Optional[str] = ..., cores_physical: _Optional[int] = ..., cores_logical: _Optional[int] = ..., max_ghz: _Optional[float] = ..., isa: _Optional[_Iterable[str]] = ..., memory_mb: _Optional[int] = ..., memory_available_mb: _Optional[int] = ..., storage_free_mb: _Optional[int] = ..., storage_total_mb: _Optional[int] = ..., runtimes: _Optional[_Mapping[str, str]] = ..., custom_kernels: _Optional[bool] = ..., custom_kernels_path: _Optional[str] = ..., formats: _Optional[_Iterable[str]] = ..., throughput: _Optional[_Union[Throughput, _Mapping]] = ..., agent_rss_mb: _Optional[float] = ..., active_model_id: _Optional[str] = ..., extra_json: _Optional[str] = ...) -> None: ...

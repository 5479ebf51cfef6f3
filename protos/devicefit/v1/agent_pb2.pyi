from devicefit.protos.devicefit.v1 import artifact_pb2 as _artifact_pb2
from devicefit.protos.devicefit.v1 import benchmark_pb2 as _benchmark_pb2
from devicefit.protos.devicefit.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelEntry(_message.Message):
    __slots__ = ("schema_version", "model_id", "version", "sha256", "size_bytes", "format", "active", "stored_at", "manifest")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    STORED_AT_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    model_id: str
    version: str
    sha256: str
    size_bytes: int
    format: _artifact_pb2.ModelFormat
    active: bool
    stored_at: str
    manifest: _artifact_pb2.ArtifactManifest
    def __init__(self, schema_version: _Optional[str] = ..., model_id: _Optional[str] = ..., version: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., format: _Optional[_Union[_artifact_pb2.ModelFormat, str]] = ..., active: _Optional[bool] = ..., stored_at: _Optional[str] = ..., manifest: _Optional[_Union[_artifact_pb2.ArtifactManifest, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("schema_version",)
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    def __init__(self, schema_version: _Optional[str] = ...) -> None: ...

class ModelList(_message.Message):
    __slots__ = ("schema_version", "status", "models", "active_sha256", "previous_sha256")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SHA256_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SHA256_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    status: _common_pb2.Status
    models: _containers.RepeatedCompositeFieldContainer[ModelEntry]
    active_sha256: str
    previous_sha256: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, schema_version: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.Status, _Mapping]] = ..., models: _Optional[_Iterable[_Union[ModelEntry, _Mapping]]] = ..., active_sha256: _Optional[str] = ..., previous_sha256: _Optional[_Iterable[str]] = ...) -> None: ...

class ActivateRequest(_message.Message):
    __slots__ = ("schema_version", "model_id")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    model_id: str
    def __init__(self, schema_version: _Optional[str] = ..., model_id: _Optional[str] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("schema_version",)
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    def __init__(self, schema_version: _Optional[str] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("schema_version", "model_id")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    model_id: str
    def __init__(self, schema_version: _Optional[str] = ..., model_id: _Optional[str] = ...) -> None: ...

class ModelOpResult(_message.Message):
    __slots__ = ("schema_version", "status", "model_id", "sha256", "active_model_id", "active_sha256", "load_ms", "first_run_ms")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SHA256_FIELD_NUMBER: _ClassVar[int]
    LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_RUN_MS_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    status: _common_pb2.Status
    model_id: str
    sha256: str
    active_model_id: str
    active_sha256: str
    load_ms: float
    first_run_ms: float
    def __init__(self, schema_version: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.Status, _Mapping]] = ..., model_id: _Optional[str] = ..., sha256: _Optional[str] = ..., active_model_id: _Optional[str] = ..., active_sha256: _Optional[str] = ..., load_ms: _Optional[float] = ..., first_run_ms: _Optional[float] = ...) -> None: ...

from devicefit.protos.devicefit.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_FORMAT_UNSPECIFIED: _ClassVar[ModelFormat]
    MODEL_FORMAT_ONNX: _ClassVar[ModelFormat]
    MODEL_FORMAT_TFLITE: _ClassVar[ModelFormat]
MODEL_FORMAT_UNSPECIFIED: ModelFormat
MODEL_FORMAT_ONNX: ModelFormat
MODEL_FORMAT_TFLITE: ModelFormat

class ArtifactManifest(_message.Message):
    __slots__ = ("schema_version", "model_id", "version", "format", "size_bytes", "sha256", "signature", "signature_key_id", "plan_summary_json", "metrics_json", "created_at", "file_name")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_SUMMARY_JSON_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    model_id: str
    version: str
    format: ModelFormat
    size_bytes: int
    sha256: str
    signature: bytes
    signature_key_id: str
    plan_summary_json: str
    metrics_json: str
    created_at: str
    file_name: str
    def __init__(self, schema_version: _Optional[str] = ..., model_id: _Optional[str] = ..., version: _Optional[str] = ..., format: _Optional[_Union[ModelFormat, str]] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., signature: _Optional[bytes] = ..., signature_key_id: _Optional[str] = ..., plan_summary_json: _Optional[str] = ..., metrics_json: _Optional[str] = ..., created_at: _Optional[str] = ..., file_name: _Optional[str] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("schema_version", "upload_id", "offset", "data", "crc32", "manifest", "activate", "running_sha256")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    ACTIVATE_FIELD_NUMBER: _ClassVar[int]
    RUNNING_SHA256_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    upload_id: str
    offset: int
    data: bytes
    crc32: int
    manifest: ArtifactManifest
    activate: bool
    running_sha256: bytes
    def __init__(self, schema_version: _Optional[str] = ..., upload_id: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., crc32: _Optional[int] = ..., manifest: _Optional[_Union[ArtifactManifest, _Mapping]] = ..., activate: _Optional[bool] = ..., running_sha256: _Optional[bytes] = ...) -> None: ...

class UploadResult(_message.Message):
    __slots__ = ("schema_version", "status", "upload_id", "model_id", "sha256", "size_bytes", "committed_offset", "resumed_from", "bytes_received", "already_stored", "activated", "load_ms", "first_run_ms")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_OFFSET_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FROM_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_STORED_FIELD_NUMBER: _ClassVar[int]
    ACTIVATED_FIELD_NUMBER: _ClassVar[int]
    LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_RUN_MS_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    status: _common_pb2.Status
    upload_id: str
    model_id: str
    sha256: str
    size_bytes: int
    committed_offset: int
    resumed_from: int
    bytes_received: int
    already_stored: bool
    activated: bool
    load_ms: float
    first_run_ms: float
    def __init__(self, schema_version: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.Status, _Mapping]] = ..., upload_id: _Optional[str] = ..., model_id: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., committed_offset: _Optional[int] = ..., resumed_from: _Optional[int] = ..., bytes_received: _Optional[int] = ..., already_stored: _Optional[bool] = ..., activated: _Optional[bool] = ..., load_ms: _Optional[float] = ..., first_run_ms: _Optional[float] = ...) -> None: ...

class QueryUploadRequest(_message.Message):
    __slots__ = ("schema_version", "upload_id", "sha256")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    upload_id: str
    sha256: str
    def __init__(self, schema_version: _Optional[str] = ..., upload_id: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class UploadState(_message.Message):
    __slots__ = ("schema_version", "status", "upload_id", "exists", "committed_offset", "already_stored", "manifest")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_OFFSET_FIELD_NUMBER: _ClassVar[int]
    ALREADY_STORED_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    status: _common_pb2.Status
    upload_id: str
    exists: bool
    committed_offset: int
    already_stored: bool
    manifest: ArtifactManifest
    def __init__(self, schema_version: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.Status, _Mapping]] = ..., upload_id: _Optional[str] = ..., exists: _Optional[bool] = ..., committed_offset: _Optional[int] = ..., already_stored: _Optional[bool] = ..., manifest: _Optional[_Union[ArtifactManifest, _Mapping]] = ...) -> None: ...

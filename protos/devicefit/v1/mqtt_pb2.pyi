from devicefit.protos.devicefit.v1 import common_pb2 as _common_pb2
from devicefit.protos.devicefit.v1 import artifact_pb2 as _artifact_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Envelope(_message.Message):
    __slots__ = ("schema_version", "request_id", "method", "reply_to", "device_id", "body")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    request_id: str
    method: str
    reply_to: str
    device_id: str
    body: bytes
    def __init__(self, schema_version: _Optional[str] = ..., request_id: _Optional[str] = ..., method: _Optional[str] = ..., reply_to: _Optional[str] = ..., device_id: _Optional[str] = ..., body: _Optional[bytes] = ...) -> None: ...

class BeginTransfer(_message.Message):
    __slots__ = ("schema_version", "upload_id", "manifest", "artifact_topic")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_TOPIC_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    upload_id: str
    manifest: _artifact_pb2.ArtifactManifest
    artifact_topic: str
    def __init__(self, schema_version: _Optional[str] = ..., upload_id: _Optional[str] = ..., manifest: _Optional[_Union[_artifact_pb2.ArtifactManifest, _Mapping]] = ..., artifact_topic: _Optional[str] = ...) -> None: ...

class FinishTransfer(_message.Message):
    __slots__ = ("schema_version", "upload_id", "activate")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVATE_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    upload_id: str
    activate: bool
    def __init__(self, schema_version: _Optional[str] = ..., upload_id: _Optional[str] = ..., activate: _Optional[bool] = ...) -> None: ...

class ByteRange(_message.Message):
    __slots__ = ("schema_version", "offset", "length")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    offset: int
    length: int
    def __init__(self, schema_version: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class TransferState(_message.Message):
    __slots__ = ("schema_version", "status", "upload_id", "size_bytes", "received", "missing", "complete", "already_stored", "sha256", "activated", "load_ms", "first_run_ms", "resumed_from")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    ALREADY_STORED_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ACTIVATED_FIELD_NUMBER: _ClassVar[int]
    LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_RUN_MS_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FROM_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    status: _common_pb2.Status
    upload_id: str
    size_bytes: int
    received: int
    missing: _containers.RepeatedCompositeFieldContainer[ByteRange]
    complete: bool
    already_stored: bool
    sha256: str
    activated: bool
    load_ms: float
    first_run_ms: float
    resumed_from: int
    def __init__(self, schema_version: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.Status, _Mapping]] = ..., upload_id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., received: _Optional[int] = ..., missing: _Optional[_Iterable[_Union[ByteRange, _Mapping]]] = ..., complete: _Optional[bool] = ..., already_stored: _Optional[bool] = ..., sha256: _Optional[str] = ..., activated: _Optional[bool] = ..., load_ms: _Optional[float] = ..., first_run_ms: _Optional[float] = ..., resumed_from: _Optional[int] = ...) -> None: ...

class DeviceStatus(_message.Message):
    __slots__ = ("schema_version", "device_id", "fleet", "online", "profile", "tags", "agent_version", "active_model_id", "active_sha256", "last_report_json", "updated_at")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    FLEET_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SHA256_FIELD_NUMBER: _ClassVar[int]
    LAST_REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    device_id: str
    fleet: str
    online: bool
    profile: str
    tags: _containers.ScalarMap[str, str]
    agent_version: str
    active_model_id: str
    active_sha256: str
    last_report_json: str
    updated_at: str
    def __init__(self, schema_version: _Optional[str] = ..., device_id: _Optional[str] = ..., fleet: _Optional[str] = ..., online: _Optional[bool] = ..., profile: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., agent_version: _Optional[str] = ..., active_model_id: _Optional[str] = ..., active_sha256: _Optional[str] = ..., last_report_json: _Optional[str] = ..., updated_at: _Optional[str] = ...) -> None: ...

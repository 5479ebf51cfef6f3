"""Zero-copy codec of ``devicefit.v1.UploadChunk`` — the one message that carries bulk bytes.

Same protobuf wire format as the generated class (the bytes are interchangeable; a test checks both
directions), but the payload is never copied through protobuf objects: the encoder emits the field headers
and appends the data once; the decoder returns ``data`` as a memoryview into the received buffer. On a
small board every copy of a 50 MB artifact costs real time (see bench/transport.py).

Field numbers follow protos/devicefit/v1/artifact.proto (UploadChunk): 1 schema_version, 2 upload_id,
3 offset, 4 data, 5 crc32 (optional fixed32), 6 manifest, 7 activate, 8 running_sha256.

:class:`FileChunks` turns a file into the encoded chunks of one upload stream, hashing as it reads when the
stream delivers the digest (one pass: read, hash, send); any transport sends them as they come.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devicefit.protos import errors as E
from devicefit.protos.devicefit.v1 import artifact_pb2
from devicefit.protos.errors import AgentError

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise AgentError(E.INVALID_ARGUMENT, "upload chunk is not a valid protobuf message (truncated varint)")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _len_field(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | _LEN) + _varint(len(payload)) + payload


def encode_upload_chunk(
    *,
    schema_version: str,
    upload_id: str,
    offset: int,
    data: bytes | memoryview,
    crc32: int | None = None,
    manifest: artifact_pb2.ArtifactManifest | None = None,
    activate: bool = False,
    running_sha256: bytes = b"",
) -> bytes:
    """Serialized UploadChunk, byte-identical to ``UploadChunk(...).SerializeToString()`` (``crc32=None``: absent)."""
    head = bytearray()
    if schema_version:
        head += _len_field(1, schema_version.encode())
    if upload_id:
        head += _len_field(2, upload_id.encode())
    if offset:
        head += _varint(3 << 3 | _VARINT) + _varint(offset)
    if data:
        head += _varint(4 << 3 | _LEN) + _varint(len(data))
    tail = bytearray()
    if crc32 is not None:
        tail += _varint(5 << 3 | _I32) + struct.pack("<I", crc32 & 0xFFFFFFFF)
    if manifest is not None:
        tail += _len_field(6, manifest.SerializeToString())
    if activate:
        tail += _varint(7 << 3 | _VARINT) + b"\x01"
    if running_sha256:
        tail += _len_field(8, running_sha256)
    return b"".join((head, data, tail))


@dataclass
class RawChunk:
    """A decoded UploadChunk; ``data`` is a view into the received buffer (no copy)."""

    schema_version: str = ""
    upload_id: str = ""
    offset: int = 0
    data: memoryview | bytes = b""
    crc32: int | None = None
    manifest: artifact_pb2.ArtifactManifest | None = None
    activate: bool = False
    running_sha256: bytes = b""

    def HasField(self, name: str) -> bool:
        if name != "manifest":
            raise ValueError(f"RawChunk has no message field {name!r}")
        return self.manifest is not None


def decode_upload_chunk(buf: bytes | memoryview) -> RawChunk:
    """Parse a serialized UploadChunk; unknown fields are skipped (forward compatible)."""
    mv = memoryview(buf)
    out = RawChunk()
    pos, end = 0, len(mv)
    try:
        while pos < end:
            key, pos = _read_varint(mv, pos)
            num, wt = key >> 3, key & 7
            if wt == _VARINT:
                value, pos = _read_varint(mv, pos)
                if num == 3:
                    out.offset = value
                elif num == 7:
                    out.activate = bool(value)
            elif wt == _LEN:
                n, pos = _read_varint(mv, pos)
                if pos + n > end:
                    raise AgentError(E.INVALID_ARGUMENT, "upload chunk is truncated (length past the end)")
                field = mv[pos : pos + n]
                pos += n
                if num == 1:
                    out.schema_version = bytes(field).decode()
                elif num == 2:
                    out.upload_id = bytes(field).decode()
                elif num == 4:
                    out.data = field
                elif num == 6:
                    out.manifest = artifact_pb2.ArtifactManifest.FromString(bytes(field))
                elif num == 8:
                    out.running_sha256 = bytes(field)
            elif wt == _I32:
                if pos + 4 > end:
                    raise AgentError(E.INVALID_ARGUMENT, "upload chunk is truncated (fixed32)")
                if num == 5:
                    out.crc32 = struct.unpack_from("<I", mv, pos)[0]
                pos += 4
            elif wt == _I64:
                pos += 8
            else:
                raise AgentError(E.INVALID_ARGUMENT, f"upload chunk has unsupported wire type {wt} (field {num})")
    except UnicodeDecodeError as exc:
        raise AgentError(E.INVALID_ARGUMENT, f"upload chunk has a non-UTF-8 string field: {exc}") from exc
    except AgentError:
        raise
    except Exception as exc:  # protobuf DecodeError of the nested manifest
        raise AgentError(E.INVALID_ARGUMENT, f"upload chunk is not a valid protobuf message: {exc}") from exc
    if pos != end:
        raise AgentError(E.INVALID_ARGUMENT, "upload chunk is truncated")
    return out


class FileChunks:
    """The encoded UploadChunk messages of one upload stream of ``path`` from ``start``.

    ``running_sha256=True`` (the stream delivers the digest): the file is hashed as it is read (one pass: read,
    hash, send), every chunk carries the sha256 of the file's bytes up to its end, and resuming at ``start`` > 0
    hashes the first ``start`` bytes locally first; afterwards :attr:`digest` is the sha256 of the whole file as
    read (``None`` before). ``running_sha256=False`` (the manifest names the sha256): nothing is hashed here and
    the chunks carry no digest — the agent hashes what it receives and stores nothing unless it matches the
    manifest. The first chunk also carries the manifest (and ``activate``). (Not read through mmap, which would
    save one in-cache copy per chunk but dies of SIGBUS if the file shrinks. Not read ahead on a thread either:
    measured on a loaded 2-core host, the handoffs cost more CPU than the overlap saved.)
    """

    def __init__(
        self,
        path: str | Path,
        *,
        size: int,
        upload_id: str,
        schema_version: str,
        manifest: artifact_pb2.ArtifactManifest,
        start: int = 0,
        chunk_size: int = 1 << 20,
        activate: bool = False,
        progress: Callable[[int, int], Any] | None = None,
        running_sha256: bool = True,
    ) -> None:
        self.path, self.size, self.upload_id, self.schema_version = Path(path), int(size), upload_id, schema_version
        self.manifest, self.start, self.chunk_size, self.activate = manifest, int(start), int(chunk_size), activate
        self.progress = progress
        self.running_sha256 = running_sha256
        self.digest: bytes | None = None
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        h = hashlib.sha256() if self.running_sha256 else None
        size, offset = self.size, self.start
        with open(self.path, "rb", buffering=0) as f:
            actual = os.fstat(f.fileno()).st_size
            if actual != size:
                raise AgentError(
                    E.INVALID_ARGUMENT, f"{self.path} is {actual} bytes, the upload says {size}",
                    "the file changed while it was being deployed; deploy it again",
                )
            if h is not None:
                while f.tell() < offset:  # resuming: hash the prefix the agent already holds
                    block = f.read(min(offset - f.tell(), 1 << 22))
                    if not block:
                        break
                    h.update(block)
            f.seek(offset)
            buf = memoryview(bytearray(max(min(self.chunk_size, size - offset), 0)))  # reused: no fresh pages per chunk
            first = True
            while first or offset < size:
                data = buf[: f.readinto(buf[: min(self.chunk_size, size - offset)]) or 0] if offset < size else b""
                if offset < size and not data:
                    raise AgentError(
                        E.INVALID_ARGUMENT, f"{self.path} ended at {offset} of {size} bytes",
                        "the file changed while it was being deployed; deploy it again",
                    )
                running = b""
                if h is not None:
                    h.update(data)  # releases the GIL for big buffers
                    running = h.digest()
                msg = encode_upload_chunk(
                    schema_version=self.schema_version, upload_id=self.upload_id, offset=offset, data=data,
                    manifest=self.manifest if first else None, activate=self.activate and first,
                    running_sha256=running,
                )
                first = False
                offset += len(data)
                self.sent = offset - self.start
                if offset >= size and h is not None:
                    self.digest = h.digest()
                yield msg
                if self.progress is not None:
                    self.progress(offset, size)

"""The zero-copy UploadChunk codec speaks exactly the generated protobuf wire format."""

from __future__ import annotations

import os
import zlib

import pytest
from devicefit.agent.chunks import decode_upload_chunk, encode_upload_chunk
from devicefit.agent.errors import AgentError
from devicefit.protos.devicefit.v1 import artifact_pb2

MANIFEST = artifact_pb2.ArtifactManifest(schema_version="1.0", model_id="m", size_bytes=10, sha256="a" * 64)


@pytest.mark.parametrize(
    "kw",
    [
        {"schema_version": "1.0", "upload_id": "u" * 64, "offset": 0, "data": b"", "crc32": 0},
        {"schema_version": "1.0", "upload_id": "x", "offset": 300, "data": os.urandom(1000), "crc32": 0},
        {"schema_version": "1.0", "upload_id": "x", "offset": 2**40, "data": os.urandom(70_000), "crc32": 0xFFFFFFFF,
         "manifest": MANIFEST, "activate": True},
        {"schema_version": "", "upload_id": "", "offset": 1, "data": b"\x00", "crc32": 1, "activate": False},
    ],
)
def test_encoding_is_byte_identical_and_round_trips(kw: dict) -> None:
    fast = encode_upload_chunk(**kw)
    slow = artifact_pb2.UploadChunk(**kw).SerializeToString()
    assert fast == slow
    parsed = artifact_pb2.UploadChunk.FromString(fast)
    dec = decode_upload_chunk(slow)
    for key in ("schema_version", "upload_id", "offset", "crc32", "activate"):
        assert getattr(dec, key) == getattr(parsed, key) == kw.get(key, getattr(parsed, key))
    assert bytes(dec.data) == kw["data"] and dec.HasField("manifest") == ("manifest" in kw)
    if "manifest" in kw:
        assert dec.manifest == MANIFEST


def test_decoder_skips_unknown_fields_and_rejects_garbage() -> None:
    data = os.urandom(100)
    msg = encode_upload_chunk(schema_version="1.1", upload_id="u", offset=5, data=data, crc32=zlib.crc32(data))
    future = msg + b"\x40\x07" + b"\x4a\x03abc" + b"\x55\x01\x02\x03\x04" + b"\x59" + bytes(8)  # fields 8-11
    dec = decode_upload_chunk(future)
    assert dec.schema_version == "1.1" and dec.offset == 5 and bytes(dec.data) == data
    with pytest.raises(AgentError, match="truncated"):
        decode_upload_chunk(msg[:-3])
    with pytest.raises(AgentError, match="wire type"):
        decode_upload_chunk(b"\x0b")
    with pytest.raises(AgentError, match="varint"):
        decode_upload_chunk(b"\x18\xff")

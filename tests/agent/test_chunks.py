"""The zero-copy UploadChunk codec speaks exactly the generated protobuf wire format; FileChunks streams a
file as chunks that carry its running sha256."""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

import pytest

from devicefit.protos.chunks import FileChunks, decode_upload_chunk, encode_upload_chunk
from devicefit.protos.devicefit.v1 import artifact_pb2
from devicefit.protos.errors import AgentError

MANIFEST = artifact_pb2.ArtifactManifest(schema_version="1.0", model_id="m", size_bytes=10, sha256="a" * 64)


@pytest.mark.parametrize(
    "kw",
    [
        {"schema_version": "1.0", "upload_id": "u" * 64, "offset": 0, "data": b""},
        {"schema_version": "1.0", "upload_id": "x", "offset": 300, "data": os.urandom(1000), "crc32": 0},
        {"schema_version": "1.0", "upload_id": "x", "offset": 2**40, "data": os.urandom(70_000), "crc32": 0xFFFFFFFF,
         "manifest": MANIFEST, "activate": True, "running_sha256": os.urandom(32)},
        {"schema_version": "", "upload_id": "", "offset": 1, "data": b"\x00", "crc32": 1, "activate": False},
        {"schema_version": "1.1", "upload_id": "f", "offset": 9, "data": os.urandom(300), "running_sha256": b"\x07" * 32},
    ],
)
def test_encoding_is_byte_identical_and_round_trips(kw: dict) -> None:
    fast = encode_upload_chunk(**kw)
    slow = artifact_pb2.UploadChunk(**kw).SerializeToString()
    assert fast == slow
    parsed = artifact_pb2.UploadChunk.FromString(fast)
    dec = decode_upload_chunk(slow)
    for key in ("schema_version", "upload_id", "offset", "activate", "running_sha256"):
        assert getattr(dec, key) == getattr(parsed, key) == kw.get(key, getattr(parsed, key))
    assert dec.crc32 == kw.get("crc32") and parsed.HasField("crc32") == ("crc32" in kw)  # presence survives
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


@pytest.mark.parametrize("start", [0, 3 * 1024, 10_000])
def test_file_chunks_carry_the_running_sha256(tmp_path: Path, start: int) -> None:
    data = os.urandom(10_000)
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    seen: list[tuple[int, int]] = []
    stream = FileChunks(path, size=len(data), upload_id="u", schema_version="1.0", manifest=MANIFEST, start=start,
                        chunk_size=4096, activate=True, progress=lambda d, t: seen.append((d, t)))
    msgs = [decode_upload_chunk(m) for m in stream]
    assert [c.offset for c in msgs] == (list(range(start, len(data), 4096)) or [len(data)])
    assert b"".join(bytes(c.data) for c in msgs) == data[start:]
    for c in msgs:  # each chunk names the digest of the file up to its end
        assert c.running_sha256 == hashlib.sha256(data[: c.offset + len(c.data)]).digest() and c.crc32 is None
    assert msgs[0].manifest == MANIFEST and msgs[0].activate and all(c.manifest is None for c in msgs[1:])
    assert stream.digest == hashlib.sha256(data).digest() and stream.sent == len(data) - start
    assert seen[-1] == (len(data), len(data))
    path.write_bytes(data + b"x")  # the file changed size since the manifest was made
    with pytest.raises(AgentError, match="changed while it was being deployed"):
        list(FileChunks(path, size=len(data), upload_id="u", schema_version="1.0", manifest=MANIFEST))


@pytest.mark.parametrize("start", [0, 4096, 10_000])
def test_file_chunks_of_a_known_digest_are_not_hashed(tmp_path: Path, start: int) -> None:
    """With the sha256 in the manifest the sender does not hash: the agent hashes and checks it at the end."""
    data = os.urandom(10_000)
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    stream = FileChunks(path, size=len(data), upload_id="u", schema_version="1.0", manifest=MANIFEST, start=start,
                        chunk_size=4096, running_sha256=False)
    msgs = [decode_upload_chunk(m) for m in stream]
    assert [c.offset for c in msgs] == (list(range(start, len(data), 4096)) or [len(data)])
    assert b"".join(bytes(c.data) for c in msgs) == data[start:]
    assert all(c.running_sha256 == b"" and c.crc32 is None for c in msgs) and msgs[0].manifest == MANIFEST
    assert stream.digest is None and stream.sent == len(data) - start

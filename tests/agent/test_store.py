"""ModelStore: crash-safe writes, resumable uploads, verification, rollback history, restarts."""

from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from pathlib import Path

import pytest

from devicefit.agent.store import ModelStore
from devicefit.protos import errors as E
from devicefit.protos.errors import AgentError
from devicefit.protos.manifest import Manifest

CHUNK = 64 * 1024


def _manifest(data: bytes, model_id: str = "m", **kw: object) -> Manifest:
    return Manifest(model_id=model_id, format="onnx", size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), **kw)  # type: ignore[arg-type]


def _running(data: bytes, end: int) -> bytes:
    """The running_sha256 a sender puts on the chunk that ends at ``end``."""
    return hashlib.sha256(data[:end]).digest()


def _upload(store: ModelStore, data: bytes, model_id: str = "m", upload_id: str | None = None) -> str:
    m = _manifest(data, model_id)
    part = store.begin_upload(upload_id or m.sha256, m)
    try:
        for off in range(part.received, len(data), CHUNK):
            piece = data[off : off + CHUNK]
            part.write(off, piece, None, _running(data, off + len(piece)))
        return part.finish().sha256
    finally:
        part.close()


def _snapshot(store: ModelStore) -> tuple[list[str], str | None, list[str], list[str]]:
    return (
        [e.sha256 for e in store.entries()],
        store.active_sha,
        store.previous,
        sorted(p.name for p in store.blobs_dir.iterdir()),
    )


def test_upload_verify_and_blob_layout(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    data = os.urandom(300_000)
    sha = _upload(store, data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert (store.blobs_dir / f"{sha}.onnx").read_bytes() == data
    assert list(store.uploads_dir.iterdir()) == []  # part + meta gone after the rename
    assert store.resolve("m").sha256 == sha and store.resolve(sha[:10]).sha256 == sha
    state = json.loads(store.state_path.read_text())
    assert sha in state["models"] and state["active"] is None


def test_resume_from_committed_offset_after_restart(tmp_path: Path) -> None:
    data = os.urandom(10 * CHUNK + 123)
    m = _manifest(data)
    store = ModelStore(tmp_path, commit_every=3 * CHUNK, commit_interval_s=0)
    part = store.begin_upload("up1", m)
    for off in range(0, 7 * CHUNK, CHUNK):
        part.write(off, data[off : off + CHUNK], zlib.crc32(data[off : off + CHUNK]))
    # simulate a crash: the file holds 7 chunks, but only 6 were committed (every 3 chunks)
    part._sync()
    part._stop_writer()
    assert part.committed == 6 * CHUNK and part.received == 7 * CHUNK
    os.close(part._fd)
    store._release("up1")
    assert (tmp_path / "uploads" / "up1.part").stat().st_size == 7 * CHUNK

    restarted = ModelStore(tmp_path, commit_every=3 * CHUNK, commit_interval_s=0)
    info = restarted.upload_info("up1")
    assert info.exists and info.committed == 6 * CHUNK and info.manifest == m
    part = restarted.begin_upload("up1", m)
    assert part.resumed_from == 6 * CHUNK and part.received == 6 * CHUNK  # the uncommitted tail was dropped
    with pytest.raises(AgentError) as exc:
        part.write(7 * CHUNK, b"x", zlib.crc32(b"x"))
    assert exc.value.code == E.OFFSET_MISMATCH and "expected 393216" in exc.value.problem
    for off in range(6 * CHUNK, len(data), CHUNK):
        part.write(off, data[off : off + CHUNK], zlib.crc32(data[off : off + CHUNK]))
    entry = part.finish()
    part.close()
    assert entry.path.read_bytes() == data


def test_close_commits_what_was_received(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, commit_every=1 << 30, commit_interval_s=30)
    data = os.urandom(5 * CHUNK)
    part = store.begin_upload("u", _manifest(data))
    part.write(0, data[:CHUNK], zlib.crc32(data[:CHUNK]))
    assert store.upload_info("u").committed == 0
    part.close()  # a stream that ends early (client gone, agent stopping)
    assert store.upload_info("u").committed == CHUNK


def test_a_paused_stream_gets_committed(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, commit_every=1 << 30, commit_interval_s=0.1)
    data = os.urandom(2 * CHUNK)
    part = store.begin_upload("p", _manifest(data))
    part.write(0, data[:CHUNK], zlib.crc32(data[:CHUNK]))
    deadline = time.monotonic() + 30
    while store.upload_info("p").committed < CHUNK and time.monotonic() < deadline:
        time.sleep(0.02)
    assert store.upload_info("p").committed == CHUNK  # durable without the stream ending
    part.close()


def test_sha_mismatch_rejected_and_store_unchanged(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    good = _upload(store, os.urandom(1000), "good")
    store.set_active(good)
    before = _snapshot(store)
    data = os.urandom(200_000)
    wrong = _manifest(data).with_(sha256=hashlib.sha256(b"other").hexdigest())
    part = store.begin_upload("bad", wrong)
    for off in range(0, len(data), CHUNK):
        part.write(off, data[off : off + CHUNK], zlib.crc32(data[off : off + CHUNK]))
    with pytest.raises(AgentError) as exc:
        part.finish()
    part.close()
    assert exc.value.code == E.CHECKSUM_MISMATCH
    assert hashlib.sha256(data).hexdigest() in exc.value.problem and "store is unchanged" in exc.value.problem
    assert _snapshot(store) == before
    assert list(store.uploads_dir.iterdir()) == []  # a bad upload is discarded, not resumed
    assert _snapshot(ModelStore(tmp_path)) == before


def test_corrupt_chunk_rejected(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    data = os.urandom(3 * CHUNK)
    part = store.begin_upload("c", _manifest(data))
    part.write(0, data[:CHUNK], zlib.crc32(data[:CHUNK]))
    flipped = bytes([data[CHUNK] ^ 0xFF]) + data[CHUNK + 1 : 2 * CHUNK]
    with pytest.raises(AgentError) as exc:
        part.write(CHUNK, flipped, zlib.crc32(data[CHUNK : 2 * CHUNK]))
    assert exc.value.code == E.CHUNK_CORRUPT and "CRC32" in exc.value.problem
    assert part.received == CHUNK  # the bad chunk was not appended
    with pytest.raises(AgentError, match="more than the manifest's size_bytes"):
        part.write(CHUNK, os.urandom(3 * CHUNK), None)
    part.close()
    assert store.entries() == [] and store.upload_info("c").committed == CHUNK


def test_corrupt_chunk_rejected_by_running_sha256_and_store_unchanged(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    good = _upload(store, os.urandom(1000), "good")
    store.set_active(good)
    before = _snapshot(store)
    data = os.urandom(3 * CHUNK)
    part = store.begin_upload("c", _manifest(data))
    part.write(0, data[:CHUNK], None, _running(data, CHUNK))
    flipped = bytes([data[CHUNK] ^ 0x01]) + data[CHUNK + 1 : 2 * CHUNK]
    with pytest.raises(AgentError) as exc:  # one flipped bit, and the digest the sender computed over its file
        part.write(CHUNK, flipped, None, _running(data, 2 * CHUNK))
    assert exc.value.code == E.CHUNK_CORRUPT and "offset 65536" in exc.value.problem
    assert "running sha256" in exc.value.problem and part.received == CHUNK  # not appended
    part.close()
    assert _snapshot(store) == before and store.upload_info("c").committed == CHUNK
    assert (store.uploads_dir / "c.part").read_bytes() == data[:CHUNK]
    part = store.begin_upload("c", _manifest(data))  # the sender resumes: the resent chunk is taken
    assert part.resumed_from == CHUNK
    for off in (CHUNK, 2 * CHUNK):
        part.write(off, data[off : off + CHUNK], None, _running(data, off + CHUNK))
    assert part.finish().path.read_bytes() == data
    part.close()


def test_pending_sha256_comes_from_the_stream(tmp_path: Path) -> None:
    from devicefit.agent.upload import UploadSpec

    store = ModelStore(tmp_path)
    data = os.urandom(5 * CHUNK + 7)
    spec = UploadSpec.pending(_manifest(data, "streamed"))
    assert spec.pending_digest and spec.sha256 == ""
    part = store.begin_upload("file-abc", spec)
    assert part.manifest is None
    for off in range(0, len(data), CHUNK):
        part.write(off, data[off : off + CHUNK], None, _running(data, min(off + CHUNK, len(data))))
    entry = part.finish()
    part.close()
    sha = hashlib.sha256(data).hexdigest()
    assert entry.sha256 == sha and entry.model_id == "streamed" and entry.path.read_bytes() == data
    info = store.upload_info("file-abc")  # the id remembers which blob it became (a hint for the client)
    assert not info.exists and info.already_stored and info.stored_sha256 == sha
    assert ModelStore(tmp_path).upload_info("file-abc").stored_sha256 == sha  # survives a restart

    # a pending upload must end with the sender's digest of the whole file
    other = os.urandom(2 * CHUNK)
    part = store.begin_upload("file-def", UploadSpec.pending(_manifest(other)))
    part.write(0, other[:CHUNK], None, _running(other, CHUNK))
    part.write(CHUNK, other[CHUNK:])  # no running_sha256 on the last chunk
    with pytest.raises(AgentError) as exc:
        part.finish()
    part.close()
    assert exc.value.code == E.INVALID_ARGUMENT and "no sha256" in exc.value.problem
    assert store.entries() == [entry] and list(store.uploads_dir.iterdir()) == []
    with pytest.raises(AgentError, match="signed manifest must name its sha256"):
        UploadSpec.pending(_manifest(other, signature=b"sig"))


def test_resumed_prefix_that_differs_from_the_sender_is_discarded(tmp_path: Path) -> None:
    from devicefit.agent.upload import UploadSpec

    store = ModelStore(tmp_path, commit_every=CHUNK, commit_interval_s=0)
    old, new = os.urandom(4 * CHUNK), os.urandom(4 * CHUNK)  # same size: a file replaced in place
    part = store.begin_upload("file-x", UploadSpec.pending(_manifest(old)))
    for off in (0, CHUNK):
        part.write(off, old[off : off + CHUNK], None, _running(old, off + CHUNK))
    part.close()
    assert store.upload_info("file-x").committed == 2 * CHUNK
    part = store.begin_upload("file-x", UploadSpec.pending(_manifest(new)))
    assert part.resumed_from == 2 * CHUNK
    with pytest.raises(AgentError) as exc:
        part.write(2 * CHUNK, new[2 * CHUNK : 3 * CHUNK], None, _running(new, 3 * CHUNK))
    part.close()
    assert exc.value.code == E.CHUNK_CORRUPT and "discarded" in exc.value.problem
    assert not store.upload_info("file-x").exists and list(store.uploads_dir.iterdir()) == []
    assert _upload(store, new, upload_id="file-x") == hashlib.sha256(new).hexdigest()  # the retry from 0


def test_meta_without_its_part_counts_as_nothing_committed(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, commit_every=CHUNK, commit_interval_s=0)
    data = os.urandom(3 * CHUNK)
    part = store.begin_upload("u", _manifest(data))
    part.write(0, data[:CHUNK], None, _running(data, CHUNK))
    part.close()
    assert store.upload_info("u").committed == CHUNK
    (store.uploads_dir / "u.part").unlink()  # e.g. a crash after the .part was renamed into blobs/
    info = store.upload_info("u")
    assert not info.exists and info.committed == 0
    part = store.begin_upload("u", _manifest(data))
    assert part.resumed_from == 0
    part.close()


def test_busy_and_invalid_upload_ids(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    data = os.urandom(100)
    part = store.begin_upload("x", _manifest(data))
    with pytest.raises(AgentError) as exc:
        store.begin_upload("x", _manifest(data))
    assert exc.value.code == E.BUSY
    part.close()
    store.begin_upload("x", _manifest(data)).close()  # released
    with pytest.raises(AgentError, match="upload_id"):
        store.begin_upload("../etc/passwd", _manifest(data))


def test_rollback_history_and_restart(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    a, b, c = (_upload(store, os.urandom(1000 + i), f"m{i}") for i in range(3))
    for sha in (a, b, c):
        store.set_active(sha)
    assert store.active_sha == c and store.previous == [a, b]
    assert store.rollback_target().sha256 == b
    store.set_active(b, rollback=True)
    assert store.active_sha == b and store.previous == [a]
    restarted = ModelStore(tmp_path)  # survives a restart
    assert restarted.active_sha == b and restarted.previous == [a]
    assert restarted.resolve(None).model_id == "m1"
    restarted.set_active(a, rollback=True)
    with pytest.raises(AgentError) as exc:
        restarted.rollback_target()
    assert exc.value.code == E.FAILED_PRECONDITION


def test_delete_rules(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    a, b = _upload(store, b"a" * 100, "a"), _upload(store, b"b" * 100, "b")
    store.set_active(a)
    store.set_active(b)
    with pytest.raises(AgentError, match="is active and cannot be deleted"):
        store.delete("b")
    gone = store.delete("a")
    assert gone.sha256 == a and not gone.path.exists() and store.previous == []
    with pytest.raises(AgentError) as exc:
        store.resolve("a")
    assert exc.value.code == E.NOT_FOUND and "'b'" in exc.value.problem


def test_atomic_state_ignores_half_written_tmp(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    sha = _upload(store, b"x" * 100)
    store.set_active(sha)
    (tmp_path / "state.json.tmp").write_text('{"half": ')  # a crash between write and rename
    restarted = ModelStore(tmp_path)
    assert restarted.active_sha == sha and not (tmp_path / "state.json.tmp").exists()


def test_verifier_hook(tmp_path: Path) -> None:
    class Reject:
        def verify(self, manifest: Manifest, digest: bytes) -> None:
            if manifest.signature != b"ok":
                raise AgentError(E.SIGNATURE_INVALID, f"signature of {manifest.model_id} is invalid")

    store = ModelStore(tmp_path, verifier=Reject())
    data = os.urandom(1000)
    part = store.begin_upload("v", _manifest(data))
    part.write(0, data, zlib.crc32(data))
    with pytest.raises(AgentError) as exc:
        part.finish()
    part.close()
    assert exc.value.code == E.SIGNATURE_INVALID and store.entries() == []
    part = store.begin_upload("v", _manifest(data, signature=b"ok"))
    part.write(0, data, zlib.crc32(data))
    assert part.finish().sha256 == hashlib.sha256(data).hexdigest()
    part.close()


def test_manifest_validation() -> None:
    from devicefit.errors import UserInputError

    with pytest.raises(UserInputError, match="model_id"):
        Manifest(model_id="a/b", format="onnx", size_bytes=1, sha256="0" * 64)
    with pytest.raises(UserInputError, match="format"):
        Manifest(model_id="a", format="pt", size_bytes=1, sha256="0" * 64)
    with pytest.raises(UserInputError, match="sha256"):
        Manifest(model_id="a", format="onnx", size_bytes=1, sha256="XYZ")
    m = Manifest(model_id="a", format="tflite", size_bytes=5, sha256="a" * 64, signature=b"\x01", metrics={"acc": 0.9})
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m


def test_state_naming_a_lost_blob_drops_it_on_restart(tmp_path: Path) -> None:
    """finish() writes the state before it fsyncs blobs/: a crash may keep the state and lose the rename (on a
    filesystem that does not journal metadata in order). The restarted store must not name a missing blob."""
    store = ModelStore(tmp_path)
    keep, lost = _upload(store, os.urandom(1000), "keep"), _upload(store, os.urandom(1001), "lost")
    store.set_active(keep)
    store.set_active(lost)
    store.resolve(lost).path.unlink()  # the rename into blobs/ that never reached the disk
    restarted = ModelStore(tmp_path)
    assert [e.sha256 for e in restarted.entries()] == [keep]
    assert restarted.active_sha is None and restarted.previous == [keep]


def test_a_failed_write_is_an_error_and_nothing_more_is_accepted(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    data = os.urandom(3 * CHUNK)
    part = store.begin_upload("w", _manifest(data))
    part.write(0, data[:CHUNK], zlib.crc32(data[:CHUNK]))
    writable, part._fd = part._fd, os.open(part.part, os.O_RDONLY)  # pwrite now fails (EBADF), like a dead disk
    try:
        with pytest.raises(AgentError) as exc:
            part.write(CHUNK, data[CHUNK : 2 * CHUNK], zlib.crc32(data[CHUNK : 2 * CHUNK]))
        assert exc.value.code == E.INTERNAL and "writing upload w failed" in exc.value.problem
        assert part.received == part.written == CHUNK
        with pytest.raises(AgentError, match="writing upload w failed"):
            part.write(CHUNK, data[CHUNK : 2 * CHUNK])
        with pytest.raises(AgentError, match="writing upload w failed"):
            part.finish()
    finally:
        part.close()
        os.close(writable)
    assert store.entries() == []

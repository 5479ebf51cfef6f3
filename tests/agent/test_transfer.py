"""Receiving a fanned-out artifact: chunks in any order, twice or never; verified by the store's upload code."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from devicefit.agent.store import ModelStore
from devicefit.agent.transfer import Transfer
from devicefit.protos.errors import AgentError
from devicefit.protos.manifest import Manifest

CHUNK = 1000


def _manifest(data: bytes, *, sha: str | None = None) -> Manifest:
    return Manifest(model_id="m", format="onnx", size_bytes=len(data), sha256=sha or hashlib.sha256(data).hexdigest())


def test_out_of_order_duplicates_and_gaps(tmp_path: Path) -> None:
    data = os.urandom(10 * CHUNK + 123)
    store = ModelStore(tmp_path / "s")
    t = Transfer(store, "up-1", _manifest(data), "devicefit/v1/f/artifacts/up-1")
    chunks = [(o, data[o : o + CHUNK]) for o in range(0, len(data), CHUNK)]
    for o, c in [chunks[0], chunks[2], chunks[2], chunks[5], chunks[0], chunks[1], *chunks[6:9]]:
        t.on_chunk(o, c, None)
    assert t.received == 3 * CHUNK
    assert t.missing() == [(3 * CHUNK, 2 * CHUNK), (9 * CHUNK, len(data) - 9 * CHUNK)]
    t.on_chunk(4 * CHUNK, b"x" * CHUNK, 12345)  # fails its CRC: dropped, still missing
    assert t.missing()[0] == (3 * CHUNK, 2 * CHUNK)
    assert not t.settle(quiet_s=0.05, max_s=0.2)
    for o, c in chunks[3:5] + chunks[9:]:
        t.on_chunk(o, c, None)
    assert t.missing() == [] and t.settle(quiet_s=0.05)
    entry = t.finish()
    assert entry.path.read_bytes() == data and store.has_blob(entry.sha256)
    t.close()


def test_resumes_from_the_committed_offset_and_rejects_a_wrong_digest(tmp_path: Path) -> None:
    data = os.urandom(8 * CHUNK)
    store = ModelStore(tmp_path / "s", commit_every=1, commit_interval_s=0.0)
    t = Transfer(store, "up-2", _manifest(data), "topic")
    for o in range(0, 4 * CHUNK, CHUNK):
        t.on_chunk(o, data[o : o + CHUNK], None)
    t.close()  # an agent restart: the committed prefix stays
    t = Transfer(store, "up-2", _manifest(data), "topic")
    assert t.resumed_from == 4 * CHUNK and t.missing() == [(4 * CHUNK, 4 * CHUNK)]
    t.close()
    bad = Transfer(store, "up-3", _manifest(data, sha="0" * 64), "topic")
    bad.on_chunk(0, data, None)
    with pytest.raises(AgentError) as exc:
        bad.finish()
    assert exc.value.code == "CHECKSUM_MISMATCH" and not store.has_blob("0" * 64)

"""Receiving an artifact published once for a whole wave (MQTT fan-out), into the same store upload code.

Chunks (``UploadChunk``: offset, data, crc32) may arrive out of order, twice, or not at all (a broker restart,
a full queue). In-order bytes go straight into the :class:`~devicefit.agent.upload.PartialUpload` (which
commits them durably as over gRPC, so a restarted agent resumes at the committed offset); chunks ahead of
the contiguous prefix wait in a bounded stash; duplicates are ignored (idempotent). ``finish`` waits while
bytes keep arriving, then either verifies + stores the file (size, sha256, signature — ``PartialUpload.finish``)
or names exactly the byte ranges still missing, which the host re-sends on this device's own topic.
"""

from __future__ import annotations

import threading
import time
import zlib

from devicefit.agent.store import Entry, ModelStore
from devicefit.protos.manifest import Manifest

#: out-of-order bytes held in memory per transfer; beyond this, chunks are dropped and asked for again
MAX_STASH_BYTES = 64 * 1024 * 1024


class Transfer:
    """One artifact being received from a fan-out topic (thread-safe)."""

    def __init__(self, store: ModelStore, upload_id: str, manifest: Manifest, topic: str) -> None:
        self.upload_id, self.manifest, self.topic = upload_id, manifest, topic
        self.part = store.begin_upload(upload_id, manifest)
        self.resumed_from = self.part.resumed_from
        self._stash: dict[int, bytes] = {}
        self._stash_bytes = 0
        self._cond = threading.Condition()
        self.entry: Entry | None = None

    @property
    def size(self) -> int:
        return int(self.manifest.size_bytes)

    @property
    def received(self) -> int:
        return int(self.part.received)

    def on_chunk(self, offset: int, data: bytes | memoryview, crc32: int | None) -> None:
        """Take one chunk (any order, duplicates allowed); a corrupt chunk is dropped and asked for again."""
        if crc32 is not None and zlib.crc32(data) != crc32:
            return
        with self._cond:
            if self.entry is not None:
                return
            self._take(offset, bytes(data))
            while True:
                hit = next(((o, d) for o, d in self._stash.items() if o <= self.received < o + len(d)), None)
                if hit is None:
                    break
                del self._stash[hit[0]]
                self._stash_bytes -= len(hit[1])
                self._take(*hit)
            for o in [o for o, d in self._stash.items() if o + len(d) <= self.received]:
                self._stash_bytes -= len(self._stash.pop(o))
            self._cond.notify_all()

    def _take(self, offset: int, data: bytes) -> None:
        rec, end = self.received, offset + len(data)
        if end <= rec or end > self.size:
            return  # duplicate (or out of range: ignored, the final sha256 check is the judge)
        if offset <= rec:
            self.part.write(rec, memoryview(data)[rec - offset :])
        elif offset not in self._stash and self._stash_bytes + len(data) <= MAX_STASH_BYTES:
            self._stash[offset] = data
            self._stash_bytes += len(data)

    def missing(self) -> list[tuple[int, int]]:
        """(offset, length) of every byte range not received yet."""
        with self._cond:
            out: list[tuple[int, int]] = []
            pos = self.received
            for o in sorted(self._stash):
                if o > pos:
                    out.append((pos, o - pos))
                pos = max(pos, o + len(self._stash[o]))
            if pos < self.size:
                out.append((pos, self.size - pos))
            return out

    def settle(self, *, quiet_s: float = 1.0, max_s: float = 15.0) -> bool:
        """Wait until complete, or until no byte arrived for ``quiet_s`` (at most ``max_s``); True if complete."""
        deadline = time.monotonic() + max_s
        with self._cond:
            while not self.part.complete and time.monotonic() < deadline:
                before = (self.received, self._stash_bytes)
                self._cond.wait(min(quiet_s, max(deadline - time.monotonic(), 0.0)))
                if (self.received, self._stash_bytes) == before:
                    break
            return bool(self.part.complete)

    def finish(self) -> Entry:
        """Verify and store the complete file (raises AgentError on a size / sha256 / signature mismatch)."""
        with self._cond:
            if self.entry is None:
                self.part.sync()
                self.entry = self.part.finish()
            return self.entry

    def close(self) -> None:
        """Commit what arrived and release the upload (a later BeginTransfer resumes from the committed offset)."""
        with self._cond:
            self._stash.clear()
            self._stash_bytes = 0
            self.part.close()

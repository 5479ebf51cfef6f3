"""A partial upload of the model store: chunks in, verified blob out (see store.py for the layout).

Crash safety: data and the committed offset are made durable with fsync before they count, and files
enter the store by rename (then the directory is fsynced), so a SIGKILL at any point leaves a state a
restarted agent resumes from.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import threading
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from devicefit.agent import errors as E
from devicefit.agent.errors import AgentError
from devicefit.agent.manifest import Manifest

if TYPE_CHECKING:
    from devicefit.agent.store import Entry, ModelStore


def fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via temp file + fsync + rename + directory fsync."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class PartialUpload:
    """An upload in progress (one stream at a time per upload id). Use via :meth:`ModelStore.begin_upload`.

    ``write`` checks offset, CRC32 and size on the caller's thread and hands the bytes to a writer thread
    (bounded queue), which appends them and feeds the sha256, so receiving goes on meanwhile. The writer
    commits when at least ``commit_every`` bytes and ``commit_interval_s`` seconds have passed since the
    last commit, and whenever the stream pauses for ``commit_interval_s`` (fsync costs milliseconds: a
    fast transfer is not slowed by many small commits, a crash loses at most about one interval of
    transfer). ``received`` >= ``written`` >= ``committed``.
    """

    QUEUE_CHUNKS = 8

    def __init__(self, store: ModelStore, upload_id: str, manifest: Manifest, committed: int) -> None:
        self.store = store
        self.upload_id = upload_id
        self.manifest = manifest
        self.part = store.uploads_dir / f"{upload_id}.part"
        self.meta = store.uploads_dir / f"{upload_id}.json"
        self.resumed_from = self.committed = self.written = self.received = committed
        self._hash = hashlib.sha256()
        mode = "r+b" if self.part.exists() else "w+b"
        self._f = open(self.part, mode)  # noqa: SIM115 - closed in close()
        self._f.truncate(committed)  # drop bytes written after the last commit
        self._f.seek(0)
        left = committed
        while left:
            block = self._f.read(min(left, 1 << 20))
            if not block:
                break
            self._hash.update(block)
            left -= len(block)
        if left:
            self._f.close()
            raise AgentError(E.INTERNAL, f"partial upload {upload_id} is shorter than its committed offset")
        self._f.seek(committed)
        self._persist()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=self.QUEUE_CHUNKS)
        self._error: BaseException | None = None
        self._last_commit = time.monotonic()
        self._writer = threading.Thread(target=self._drain, name=f"upload-{upload_id[:12]}", daemon=True)
        self._writer.start()

    # ---- writer thread -----------------------------------------------------------------------------
    def _drain(self) -> None:
        interval = self.store.commit_interval_s
        while True:
            try:
                data = self._queue.get(timeout=max(interval, 0.05))
            except queue.Empty:  # the stream paused: make what arrived durable
                try:
                    if self._error is None:
                        self._commit_written()
                except BaseException as exc:
                    self._error = exc
                continue
            try:
                if data is None:
                    return
                if self._error is None:
                    self._f.write(data)
                    self._hash.update(data)
                    self.written += len(data)
                    if (
                        self.written - self.committed >= self.store.commit_every
                        and time.monotonic() - self._last_commit >= interval
                    ):
                        self._commit_written()
            except BaseException as exc:  # surfaced on the caller's next write / commit
                self._error = exc
            finally:
                self._queue.task_done()

    def _commit_written(self) -> None:
        if self.written == self.committed:
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self.committed = self.written
        self._persist()
        self._last_commit = time.monotonic()

    def _raise_writer_error(self) -> None:
        if self._error is not None:
            raise AgentError(E.INTERNAL, f"writing upload {self.upload_id} failed: {self._error}") from self._error

    def _sync(self) -> None:
        """Wait until the writer has written everything queued."""
        self._queue.join()
        self._raise_writer_error()

    def _stop_writer(self) -> None:
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join()

    # ---- caller side -------------------------------------------------------------------------------
    def write(self, offset: int, data: bytes, crc32: int | None = None) -> None:
        self._raise_writer_error()
        if offset != self.received:
            raise AgentError(
                E.OFFSET_MISMATCH,
                f"chunk of upload {self.upload_id} starts at offset {offset}, expected {self.received}",
                "ask the agent for the committed offset (QueryUpload) and resume from there",
            )
        if crc32 is not None and zlib.crc32(data) != crc32:
            raise AgentError(
                E.CHUNK_CORRUPT,
                f"chunk at offset {offset} of upload {self.upload_id} failed its CRC32 check "
                f"({len(data)} bytes; the upload keeps the {self.received} bytes before it)",
                "resend from the committed offset (devicefit deploy resumes automatically)",
            )
        if self.received + len(data) > self.manifest.size_bytes:
            raise AgentError(
                E.INVALID_ARGUMENT,
                f"upload {self.upload_id} sends more than the manifest's size_bytes={self.manifest.size_bytes}",
                "regenerate the manifest from the file being sent",
            )
        if data:
            self._queue.put(data)
            self.received += len(data)

    def commit(self) -> None:
        """Make everything received so far durable and record it as the resume point."""
        if self._f.closed:
            return
        self._sync()
        self._commit_written()

    def _persist(self) -> None:
        meta = {"committed": self.committed, "manifest": self.manifest.to_dict()}
        atomic_write(self.meta, json.dumps(meta).encode())

    @property
    def complete(self) -> bool:
        return self.received == self.manifest.size_bytes

    def finish(self) -> Entry:
        """Verify size + sha256 (+ signature) and move the file into the store."""
        self.commit()
        m = self.manifest
        if not self.complete:
            raise AgentError(
                E.INCOMPLETE,
                f"upload {self.upload_id} ended at {self.received} of {m.size_bytes} bytes",
                "resume the upload (devicefit deploy resumes from the committed offset)",
            )
        self._stop_writer()
        digest = self._hash.digest()
        if digest.hex() != m.sha256:
            self.discard()
            raise AgentError(
                E.CHECKSUM_MISMATCH,
                f"upload {self.upload_id}: received data has sha256 {digest.hex()}, the manifest says {m.sha256}; "
                "the partial upload was discarded and the store is unchanged",
                "redeploy; if it persists, the file changed after the manifest was made — rebuild the manifest",
            )
        if self.store.verifier is not None:
            try:
                self.store.verifier.verify(m, digest)
            except AgentError:
                self.discard()
                raise
        self._f.close()
        dest = self.store.blob_path(m)
        os.replace(self.part, dest)
        fsync_dir(dest.parent)
        self.meta.unlink(missing_ok=True)
        fsync_dir(self.meta.parent)
        self.store._release(self.upload_id)
        return self.store.add_entry(m)

    def discard(self) -> None:
        self.close()
        self.part.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)

    def close(self) -> None:
        """Commit what was received and let another stream resume this upload."""
        if not self._f.closed:
            with contextlib.suppress(OSError, AgentError):
                self.commit()
            self._stop_writer()
            self._f.close()
        self.store._release(self.upload_id)

"""A partial upload of the model store: chunks in, verified blob out (see store.py for the layout).

Crash safety: data and the committed offset are made durable with fsync before they count, and files
enter the store by rename (then the directory is fsynced), so a SIGKILL at any point leaves a state a
restarted agent resumes from.

Cost per byte (what bench/transport.py measures): the receiving thread hashes each chunk (sha256 releases the
GIL, so gRPC keeps receiving meanwhile) and appends it with ``os.pwrite`` right there, asking the kernel every
few MiB to start writing it back (``sync_file_range``, a hint), so the fsyncs at commit points and at the end
find little left to flush. (A writer thread fed by a queue was measured to cost more CPU in handoffs than it
saved in overlap: the kernel copies 50 MB into the page cache in ~15 ms.) The sha256 the agent must compute
anyway doubles as the per-chunk integrity check (``running_sha256``), so a chunk costs no separate checksum.
A fresh upload writes no metadata until its first commit, and the end costs one fsync of the data, the
rename, the state file (temp file fsynced, renamed) and one fsync of each directory touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devicefit.protos import errors as E
from devicefit.protos.errors import AgentError
from devicefit.protos.manifest import Manifest

if TYPE_CHECKING:
    from devicefit.agent.store import Entry, ModelStore

#: stands in for a pending sha256 only while the other manifest fields are validated; never stored
_VALIDATION_SHA = "0" * 64


def fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via temp file + fsync + rename + directory fsync."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a leftover temp file would hold space a disk that just filled up needs
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


_writeback: Callable[[int, int, int], None] | bool | None = False  # False: not looked up yet


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing ``[offset, offset + nbytes)`` of ``fd`` to disk now (Linux
    ``sync_file_range(SYNC_FILE_RANGE_WRITE)``). Only a hint that spreads the disk work over the transfer:
    durability still comes from fsync. A no-op elsewhere or when unavailable."""
    global _writeback
    if _writeback is False:
        _writeback = None
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                fn = ctypes.CDLL(None, use_errno=True).sync_file_range
                fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                fn.restype = ctypes.c_int

                def _start(fd: int, offset: int, nbytes: int) -> None:
                    fn(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE; errors are ignored (a hint)

                _writeback = _start
            except (OSError, AttributeError):
                pass
    if callable(_writeback):
        _writeback(fd, offset, nbytes)


@dataclass(frozen=True)
class UploadSpec:
    """What an upload becomes: its manifest as a dict (:meth:`Manifest.to_dict` form). ``sha256`` is "" while
    the digest is pending: the sender hashes as it streams and the last chunk's ``running_sha256`` names it."""

    fields: Mapping[str, Any]

    @classmethod
    def of(cls, manifest: Manifest | UploadSpec) -> UploadSpec:
        return manifest if isinstance(manifest, UploadSpec) else cls(manifest.to_dict())

    @classmethod
    def pending(cls, manifest: Manifest) -> UploadSpec:
        """``manifest`` (validated with any sha256) with its sha256 left to the stream."""
        if manifest.signature:
            raise AgentError(
                E.INVALID_ARGUMENT, "a signed manifest must name its sha256 (the signature is over it)",
                "send the manifest's sha256 in the first chunk",
            )
        return cls({**manifest.to_dict(), "sha256": ""})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UploadSpec:
        if d.get("sha256"):
            return cls(Manifest.from_dict(d).to_dict())
        return cls.pending(Manifest.from_dict({**d, "sha256": _VALIDATION_SHA}))

    @property
    def sha256(self) -> str:
        return str(self.fields["sha256"])

    @property
    def pending_digest(self) -> bool:
        return not self.sha256

    @property
    def size_bytes(self) -> int:
        return int(self.fields["size_bytes"])

    def manifest(self, sha256: str | None = None) -> Manifest:
        """The manifest with its digest (``sha256`` fills a pending one)."""
        return Manifest.from_dict({**self.fields, "sha256": sha256 or self.sha256})

    def same_upload(self, other: UploadSpec) -> bool:
        """Whether a partial upload of ``other`` can be resumed for ``self``. Known digests must be equal;
        pending ones need the same size and format (the first resumed chunk's running_sha256 then proves
        that the stored prefix is the sender's)."""
        if self.sha256 or other.sha256:
            return self.sha256 == other.sha256
        return self.size_bytes == other.size_bytes and self.fields["format"] == other.fields["format"]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.fields)


class PartialUpload:
    """An upload in progress (one stream at a time per upload id). Use via :meth:`ModelStore.begin_upload`.

    ``write`` checks offset, size and integrity (``running_sha256`` and/or CRC32), feeds the sha256 and appends
    the bytes, all on the caller's thread. It commits (fsync the data, then persist the offset) when at least
    ``commit_every`` bytes and ``commit_interval_s`` seconds have passed since the last commit; a small
    background thread also commits whenever the stream pauses for ``commit_interval_s``.
    ``received`` >= ``written`` >= ``committed`` (``received == written`` once ``write`` returns).
    """

    #: start the kernel's writeback every this many bytes (see :func:`start_writeback`)
    WRITEBACK_BYTES = 4 * 1024 * 1024

    def __init__(self, store: ModelStore, upload_id: str, spec: UploadSpec, committed: int) -> None:
        self.store = store
        self.upload_id = upload_id
        self.spec = spec
        self.part = store.uploads_dir / f"{upload_id}.part"
        self.meta = store.uploads_dir / f"{upload_id}.json"
        self._hash = hashlib.sha256()
        self._fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(self._fd).st_size < committed:  # cannot happen unless the file was tampered with
                committed = 0
            os.ftruncate(self._fd, committed)  # drop bytes written after the last commit
            pos = 0
            while pos < committed:
                block = os.pread(self._fd, min(committed - pos, 1 << 22), pos)
                if not block:
                    raise AgentError(E.INTERNAL, f"partial upload {upload_id} is shorter than its committed offset")
                self._hash.update(block)
                pos += len(block)
        except BaseException:
            os.close(self._fd)
            raise
        self.resumed_from = self.committed = self.written = self.received = committed
        self._writeback_from = committed
        #: the sender's running_sha256 of the last chunk that had one, and the offset it covers
        self._running: tuple[int, bytes] | None = None
        self._closed = False
        self._error: BaseException | None = None
        self._lock = threading.Lock()  # the file's tail and the offsets: the caller and the committer
        self._last_commit = self._last_write = time.monotonic()
        self._stop = threading.Event()
        self._committer = threading.Thread(target=self._commit_on_pause, name=f"upload-{upload_id[:12]}",
                                           daemon=True)
        self._committer.start()

    @property
    def manifest(self) -> Manifest | None:
        """The manifest, when its sha256 is known (before the end of a pending upload it is not)."""
        return None if self.spec.pending_digest else self.spec.manifest()

    # ---- writing -----------------------------------------------------------------------------------
    def _commit_on_pause(self) -> None:
        """Committer thread: make what arrived durable once the stream has paused for ``commit_interval_s``."""
        interval = self.store.commit_interval_s
        while not self._stop.wait(max(interval, 0.05)):
            if self._error is not None or self.written == self.committed:
                continue
            if time.monotonic() - self._last_write >= interval:
                try:
                    self._commit_written()
                except BaseException as exc:  # surfaced on the caller's next write / commit
                    self._error = exc

    def _append(self, data: bytes | memoryview) -> None:
        with self._lock:
            view = memoryview(data)
            done = 0
            while done < len(view):
                done += os.pwrite(self._fd, view[done:], self.written + done)
            self.written += done
            if self.written - self._writeback_from >= self.WRITEBACK_BYTES:
                start_writeback(self._fd, self._writeback_from, self.written - self._writeback_from)
                self._writeback_from = self.written
        self._last_write = time.monotonic()
        if (
            self.written - self.committed >= self.store.commit_every
            and self._last_write - self._last_commit >= self.store.commit_interval_s
        ):
            self._commit_written()

    def _commit_written(self) -> None:
        with self._lock:  # the caller (chunk count / commit) and the committer (pause) may both get here
            written = self.written
            if written == self.committed:
                return
            os.fsync(self._fd)
            self.committed = written
            self._persist()
            self._last_commit = time.monotonic()

    def _raise_writer_error(self) -> None:
        if self._error is not None:
            raise AgentError(E.INTERNAL, f"writing upload {self.upload_id} failed: {self._error}") from self._error

    def sync(self) -> None:
        """Raise the I/O error of a background commit, if any (every received byte is written already)."""
        self._sync()

    def _sync(self) -> None:
        self._raise_writer_error()

    def _stop_writer(self) -> None:
        """Stop the committer thread (commits after this happen only on the caller's thread)."""
        if self._committer.is_alive():
            self._stop.set()
            self._committer.join()

    # ---- caller side -------------------------------------------------------------------------------
    def write(
        self, offset: int, data: bytes | memoryview, crc32: int | None = None, running_sha256: bytes | None = None
    ) -> None:
        """Append one chunk. ``running_sha256``: the sender's sha256 of bytes [0, offset + len(data));
        ``crc32``: zlib CRC32 of ``data``. Either rejects a corrupted chunk here, before it is stored."""
        self._raise_writer_error()
        if offset != self.received:
            raise AgentError(
                E.OFFSET_MISMATCH,
                f"chunk of upload {self.upload_id} starts at offset {offset}, expected {self.received}",
                "ask the agent for the committed offset (QueryUpload) and resume from there",
            )
        if self.received + len(data) > self.spec.size_bytes:
            raise AgentError(
                E.INVALID_ARGUMENT,
                f"upload {self.upload_id} sends more than the manifest's size_bytes={self.spec.size_bytes}",
                "regenerate the manifest from the file being sent",
            )
        if crc32 is not None and zlib.crc32(data) != crc32:
            raise AgentError(
                E.CHUNK_CORRUPT,
                f"chunk at offset {offset} of upload {self.upload_id} failed its CRC32 check "
                f"({len(data)} bytes; the upload keeps the {self.received} bytes before it)",
                "resend from the committed offset (devicefit deploy resumes automatically)",
            )
        if running_sha256:
            if len(running_sha256) != 32:
                raise AgentError(E.INVALID_ARGUMENT, f"running_sha256 has {len(running_sha256)} bytes, not 32")
            h = self._hash.copy()
            h.update(data)  # releases the GIL: gRPC goes on receiving meanwhile
            if h.digest() != running_sha256:
                raise self._reject(offset, len(data))
            self._hash = h
            self._running = (offset + len(data), running_sha256)
        else:
            self._hash.update(data)
        if len(data):
            try:
                self._append(data)
            except OSError as exc:
                self._error = exc
                self._raise_writer_error()
            self.received += len(data)

    def _reject(self, offset: int, n: int) -> AgentError:
        """The error for a chunk that failed its running sha256 check."""
        if offset == self.resumed_from > 0:  # the stored prefix is not the sender's file: start over
            self.discard()
            return AgentError(
                E.CHUNK_CORRUPT,
                f"upload {self.upload_id} resumed at offset {offset}, but the stored {offset} bytes differ from the "
                "sender's (running sha256 mismatch); the partial upload was discarded",
                "send it again from offset 0 (devicefit deploy retries automatically)",
            )
        return AgentError(
            E.CHUNK_CORRUPT,
            f"chunk at offset {offset} of upload {self.upload_id} failed its integrity check (running sha256 "
            f"mismatch, {n} bytes; the upload keeps the {offset} bytes before it)",
            "resend from the committed offset (devicefit deploy resumes automatically)",
        )

    def commit(self) -> None:
        """Make everything received so far durable and record it as the resume point."""
        if self._closed:
            return
        self._sync()
        self._commit_written()

    def _persist(self) -> None:
        meta = {"committed": self.committed, "manifest": self.spec.to_dict()}
        atomic_write(self.meta, json.dumps(meta).encode())

    @property
    def complete(self) -> bool:
        return self.received == self.spec.size_bytes

    def finish(self) -> Entry:
        """Verify size + sha256 (+ signature), make the file durable and move it into the store."""
        self._sync()
        spec = self.spec
        if not self.complete:
            raise AgentError(
                E.INCOMPLETE,
                f"upload {self.upload_id} ended at {self.received} of {spec.size_bytes} bytes",
                "resume the upload (devicefit deploy resumes from the committed offset)",
            )
        digest = self._hash.digest()
        claimed = spec.sha256
        if not claimed:
            if self._running is None or self._running[0] != spec.size_bytes:
                self.discard()
                raise AgentError(
                    E.INVALID_ARGUMENT,
                    f"upload {self.upload_id} has no sha256: the manifest left it to the stream, but the last chunk "
                    "carries no running_sha256; the partial upload was discarded",
                    "send running_sha256 on every chunk, or the sha256 in the manifest",
                )
            claimed = self._running[1].hex()
        if digest.hex() != claimed:
            self.discard()
            raise AgentError(
                E.CHECKSUM_MISMATCH,
                f"upload {self.upload_id}: received data has sha256 {digest.hex()}, the manifest says {claimed}; "
                "the partial upload was discarded and the store is unchanged",
                "redeploy; if it persists, the file changed after the manifest was made — rebuild the manifest",
            )
        m = spec.manifest(digest.hex())
        if self.store.verifier is not None:
            try:
                self.store.verifier.verify(m, digest)
            except AgentError:
                self.discard()
                raise
        self._stop_writer()
        os.fsync(self._fd)  # the data is durable before the rename makes it visible
        os.close(self._fd)
        self._closed = True
        dest = self.store.blob_path(m)
        os.replace(self.part, dest)
        # the state file (fsynced temp file, rename, root fsync) before the blobs/ fsync: a filesystem that
        # journals metadata in order has committed the rename above with the state's first fsync, so the last
        # fsync costs nothing; one that does not may lose the rename in a crash while keeping the state, which
        # then names a missing blob and drops it when it is loaded (ModelStore._load_state) — and the upload
        # had not been acknowledged yet
        entry = self.store.add_entry(m, upload_id=self.upload_id)
        fsync_dir(dest.parent)
        # a stale meta whose .part is gone reads as "nothing committed" (see ModelStore.upload_info): no fsync
        self.meta.unlink(missing_ok=True)
        self.store._release(self.upload_id)
        return entry

    def discard(self) -> None:
        if not self._closed:
            self._stop_writer()
            os.close(self._fd)
            self._closed = True
        self.part.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)
        self.store._release(self.upload_id)

    def close(self) -> None:
        """Commit what was received and checked, and let another stream resume this upload."""
        if not self._closed:
            self._stop_writer()
            with contextlib.suppress(OSError, AgentError):
                self._commit_written()
            os.close(self._fd)
            self._closed = True
            if self.committed == 0:  # nothing to resume from: leave no empty leftovers behind
                self.part.unlink(missing_ok=True)
                self.meta.unlink(missing_ok=True)
        self.store._release(self.upload_id)

"""Content-addressed model store of the agent; crash-safe, resumable, survives restarts.

Layout under the store root::

    blobs/<sha256>.<onnx|tflite>   verified model files (never modified after the rename into place)
    uploads/<upload_id>.part       bytes received so far (may run ahead of the committed offset)
    uploads/<upload_id>.json       {"committed": N, "manifest": {...}}: the first N bytes of .part are fsynced
                                   (written at the first commit; the manifest's sha256 is "" while pending)
    state.json                     {"models": {sha: {...}}, "active": sha|null, "previous": [sha, ...],
                                    "uploads": {upload_id: sha}}  (recent uploads whose id is not their sha)

Every file that matters is written to a temp file, fsynced, renamed into place, and its directory fsynced,
so a crash (or SIGKILL) at any point leaves either the old or the new version. A partial upload commits
(fsync data, then persist the offset) periodically (see :class:`PartialUpload`), when the stream pauses
and when it ends; after a restart it resumes from the committed offset (a .part longer than that is
truncated back to it; a meta file whose .part is missing counts as nothing committed).
A finished upload enters ``blobs/`` only after its size and sha256 (and signature, when a
:class:`Verifier` is configured) check out. Loading/activating is the service's job (see service.py): the
store only records which blob is active and the rollback history.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from devicefit.agent.upload import PartialUpload, UploadSpec, atomic_write
from devicefit.errors import DevicefitError
from devicefit.protos import errors as E
from devicefit.protos.errors import AgentError
from devicefit.protos.manifest import Manifest, utc_now
from devicefit.protos.signing import version_key

_UPLOAD_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
STATE_VERSION = 1
#: how many finished uploads (upload id -> sha256) the store remembers for QueryUpload
MAX_RECENT_UPLOADS = 64
#: partial uploads untouched for this long are deleted when the store opens (abandoned streams)
STALE_UPLOAD_S = 24 * 3600.0
#: an upload is refused unless the disk keeps at least this much free after it
FREE_SPACE_RESERVE = 16 * 1024 * 1024


class Verifier(Protocol):
    """Checks an artifact's signature over its sha256 digest; raises AgentError(SIGNATURE_INVALID) if bad."""

    def verify(self, manifest: Manifest, digest: bytes) -> None: ...


@dataclass(frozen=True)
class Entry:
    """One stored model file."""

    manifest: Manifest
    stored_at: str
    path: Path

    @property
    def sha256(self) -> str:
        return self.manifest.sha256

    @property
    def model_id(self) -> str:
        return self.manifest.model_id


@dataclass(frozen=True)
class UploadInfo:
    upload_id: str
    exists: bool
    committed: int
    manifest: Manifest | None  # None also while the partial upload's sha256 is pending
    already_stored: bool = False
    spec: UploadSpec | None = None
    #: sha256 of the stored blob when ``already_stored``
    stored_sha256: str = ""


class ModelStore:
    """The agent's model store (thread-safe)."""

    def __init__(
        self,
        root: str | Path,
        *,
        verifier: Verifier | None = None,
        commit_every: int = 4 * 1024 * 1024,
        commit_interval_s: float = 0.5,
        max_history: int = 8,
        max_store_bytes: int | None = None,
        stale_upload_s: float = STALE_UPLOAD_S,
    ) -> None:
        self.root = Path(root).expanduser()
        self.blobs_dir = self.root / "blobs"
        self.uploads_dir = self.root / "uploads"
        self.state_path = self.root / "state.json"
        self.verifier = verifier
        self.commit_every = int(commit_every)
        self.commit_interval_s = float(commit_interval_s)
        self.max_history = int(max_history)
        self.max_store_bytes = max_store_bytes
        self._lock = threading.RLock()
        self._uploading: set[str] = set()
        for d in (self.root, self.blobs_dir, self.uploads_dir):
            d.mkdir(parents=True, exist_ok=True)
        for tmp in [*self.root.glob("*.tmp"), *self.uploads_dir.glob("*.tmp"), *self.blobs_dir.glob("*.tmp")]:
            tmp.unlink(missing_ok=True)
        self._state = self._load_state()
        self._collect_garbage(stale_upload_s)

    # ---- state -------------------------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        if not self.state_path.exists():
            return {"state_version": STATE_VERSION, "models": {}, "active": None, "previous": [], "uploads": {}}
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError) as exc:
            raise AgentError(
                E.INTERNAL, f"store state {self.state_path} is unreadable: {exc}",
                "restore it from a backup or move the store directory away to start empty",
            ) from exc
        models = state.get("models", {})
        state["models"] = {sha: m for sha, m in models.items() if self.blob_path(Manifest.from_dict(m["manifest"])).exists()}
        state["previous"] = [s for s in state.get("previous", []) if s in state["models"]]
        if state.get("active") not in state["models"]:
            state["active"] = None
        state["uploads"] = {u: sha for u, sha in state.get("uploads", {}).items() if sha in state["models"]}
        return state

    def _collect_garbage(self, stale_s: float) -> None:
        """Delete partial uploads untouched for ``stale_s`` and blobs no record names (an upload that crashed
        between its rename into blobs/ and the state write: it was never acknowledged)."""
        cutoff = time.time() - stale_s
        for p in self.uploads_dir.iterdir():
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink()
            except OSError:
                pass
        named = {self.blob_path(Manifest.from_dict(m["manifest"])).name for m in self._state["models"].values()}
        for p in self.blobs_dir.iterdir():
            if p.name not in named:
                p.unlink(missing_ok=True)

    def _save(self) -> None:
        atomic_write(self.state_path, json.dumps(self._state, indent=1, sort_keys=True).encode())

    def _mutate(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Apply ``change`` to a copy of the state, write the copy to disk, and only then make it current: a
        failed write (disk full) leaves memory as the disk says. Call with the lock held."""
        new = copy.deepcopy(self._state)
        change(new)
        atomic_write(self.state_path, json.dumps(new, indent=1, sort_keys=True).encode())
        self._state = new

    def blob_path(self, manifest: Manifest) -> Path:
        return self.blobs_dir / f"{manifest.sha256}{manifest.extension}"

    def _entry(self, sha: str) -> Entry:
        rec = self._state["models"][sha]
        m = Manifest.from_dict(rec["manifest"])
        return Entry(m, rec["stored_at"], self.blob_path(m))

    def add_entry(self, m: Manifest, *, upload_id: str = "") -> Entry:
        """Record a stored blob (and, for an upload id that is not the sha256, which blob it became)."""
        def change(state: dict[str, Any]) -> None:
            state["models"][m.sha256] = {"manifest": m.to_dict(), "stored_at": utc_now()}
            if upload_id and upload_id != m.sha256:
                uploads = state.setdefault("uploads", {})
                uploads.pop(upload_id, None)
                uploads[upload_id] = m.sha256
                for old in list(uploads)[: max(0, len(uploads) - MAX_RECENT_UPLOADS)]:
                    del uploads[old]

        with self._lock:
            self._mutate(change)
            return self._entry(m.sha256)

    # ---- uploads -----------------------------------------------------------------------------------
    @staticmethod
    def check_upload_id(upload_id: str) -> None:
        if not _UPLOAD_ID_RE.match(upload_id or ""):
            raise AgentError(
                E.INVALID_ARGUMENT, f"upload_id {upload_id[:140]!r} is invalid",
                "use 1-128 characters from A-Z a-z 0-9 . _ -",
            )

    _check_upload_id = check_upload_id

    def used_bytes(self) -> int:
        """Bytes the store's blobs and partial uploads take."""
        total = 0
        for d in (self.blobs_dir, self.uploads_dir):
            for p in d.iterdir():
                with contextlib.suppress(OSError):
                    total += p.stat().st_size
        return total

    def check_space(self, upload_id: str, need: int) -> None:
        """Refuse (RESOURCE_EXHAUSTED) an upload of ``need`` more bytes over the quota or the free disk space."""
        if self.max_store_bytes is not None:
            used = self.used_bytes()
            if used + need > self.max_store_bytes:
                raise AgentError(
                    E.RESOURCE_EXHAUSTED,
                    f"upload {upload_id[:64]}: size_bytes needs {need} more bytes; the store holds {used} of its "
                    f"{self.max_store_bytes}-byte quota (--max-store-mb)",
                    "delete stored models (devicefit agent models / delete) or raise --max-store-mb",
                )
        free = shutil.disk_usage(self.root).free
        if need + FREE_SPACE_RESERVE > free:
            raise AgentError(
                E.RESOURCE_EXHAUSTED,
                f"upload {upload_id[:64]}: size_bytes needs {need} more bytes; the disk has {free} free "
                f"(and keeps {FREE_SPACE_RESERVE} in reserve)",
                "free space on the device or delete stored models",
            )

    def has_blob(self, sha256: str) -> bool:
        with self._lock:
            return sha256 in self._state["models"]

    def upload_info(self, upload_id: str, sha256: str = "") -> UploadInfo:
        """The partial upload ``upload_id`` (committed offset, manifest), and whether its blob is stored:
        the blob ``sha256`` names, or the one this upload id finished as (when no partial upload is left)."""
        self._check_upload_id(upload_id)
        meta = self.uploads_dir / f"{upload_id}.json"
        part = self.uploads_dir / f"{upload_id}.part"
        stored_sha = sha256 if sha256 and self.has_blob(sha256) else ""
        spec: UploadSpec | None = None
        committed = 0
        if meta.exists() and part.exists():
            try:
                d = json.loads(meta.read_text())
                spec = UploadSpec.from_dict(d["manifest"])
                committed = min(int(d["committed"]), part.stat().st_size, spec.size_bytes)
            except (OSError, ValueError, KeyError, DevicefitError):
                spec, committed = None, 0  # unreadable leftovers count as nothing committed
        if spec is None and not stored_sha:
            with self._lock:
                done = self._state.get("uploads", {}).get(upload_id, "")
                stored_sha = done if done in self._state["models"] else ""
        manifest = spec.manifest() if spec is not None and not spec.pending_digest else None
        return UploadInfo(upload_id, spec is not None, committed, manifest, bool(stored_sha), spec, stored_sha)

    def begin_upload(self, upload_id: str, manifest: Manifest | UploadSpec) -> PartialUpload:
        """Open (or resume) an upload. A leftover partial upload of different content is discarded."""
        self._check_upload_id(upload_id)
        spec = UploadSpec.of(manifest)
        with self._lock:
            if upload_id in self._uploading:
                raise AgentError(E.BUSY, f"upload {upload_id} is already being received", "wait for it to finish")
            self._uploading.add(upload_id)
        try:
            info = self.upload_info(upload_id)
            committed = 0
            if info.spec is not None and info.spec.same_upload(spec):
                committed = info.committed
            else:  # nothing to resume: a leftover offset must not outlive the bytes it describes
                (self.uploads_dir / f"{upload_id}.json").unlink(missing_ok=True)
                (self.uploads_dir / f"{upload_id}.part").unlink(missing_ok=True)
            self.check_space(upload_id, spec.size_bytes - committed)
            return PartialUpload(self, upload_id, spec, committed)
        except BaseException:
            self._release(upload_id)
            raise

    def _release(self, upload_id: str) -> None:
        with self._lock:
            self._uploading.discard(upload_id)

    # ---- models ------------------------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        with self._lock:
            return sorted((self._entry(s) for s in self._state["models"]), key=lambda e: (e.stored_at, e.model_id))

    @property
    def active_sha(self) -> str | None:
        with self._lock:
            return self._state["active"]

    @property
    def previous(self) -> list[str]:
        with self._lock:
            return list(self._state["previous"])

    def active(self) -> Entry | None:
        sha = self.active_sha
        return self._entry(sha) if sha else None

    def resolve(self, ref: str | None) -> Entry:
        """An entry by sha256 (or a unique prefix of >= 8 hex digits) or model id (newest); None/"" = active."""
        with self._lock:
            if not ref:
                entry = self.active()
                if entry is None:
                    raise AgentError(E.NOT_FOUND, "no model is active on this device", "deploy a model first")
                return entry
            models = self._state["models"]
            if ref in models:
                return self._entry(ref)
            by_id = [self._entry(s) for s, m in models.items() if m["manifest"]["model_id"] == ref]
            if by_id:
                return max(by_id, key=lambda e: e.stored_at)
            if len(ref) >= 8:
                hits = [s for s in models if s.startswith(ref.lower())]
                if len(hits) == 1:
                    return self._entry(hits[0])
            known = sorted({m["manifest"]["model_id"] for m in models.values()})
            raise AgentError(E.NOT_FOUND, f"no stored model {ref!r} (stored: {known})", "deploy it, or pick a stored id")

    def set_active(self, sha: str, *, rollback: bool = False) -> None:
        """Record ``sha`` as active. Normal activation pushes the old active onto the rollback history;
        a rollback pops it instead (so two rollbacks step back twice, they do not toggle)."""
        with self._lock:
            if sha not in self._state["models"]:
                raise AgentError(E.NOT_FOUND, f"no stored model with sha256 {sha}")

            def change(state: dict[str, Any]) -> None:
                prev, cur = state["previous"], state["active"]
                if rollback:
                    if prev and prev[-1] == sha:
                        prev.pop()
                elif cur and cur != sha:
                    prev[:] = [*[s for s in prev if s != cur][-(self.max_history - 1) :], cur]
                state["active"] = sha
                m = state["models"][sha]["manifest"]
                versions = state.setdefault("versions", {})
                if not rollback and version_key(m["version"]) > version_key(versions.get(m["model_id"], "0")):
                    versions[m["model_id"]] = m["version"]

            self._mutate(change)

    def newest_version(self, model_id: str) -> str | None:
        """The highest version of ``model_id`` ever activated here (not by a rollback), if any."""
        with self._lock:
            return self._state.get("versions", {}).get(model_id)

    def rollback_target(self) -> Entry:
        with self._lock:
            if not self._state["previous"]:
                raise AgentError(
                    E.FAILED_PRECONDITION, "there is no previous model to roll back to", "activate a stored model by id"
                )
            return self._entry(self._state["previous"][-1])

    def delete(self, ref: str) -> Entry:
        with self._lock:
            entry = self.resolve(ref)
            if entry.sha256 == self._state["active"]:
                raise AgentError(
                    E.FAILED_PRECONDITION,
                    f"model {entry.model_id} ({entry.sha256[:12]}) is active and cannot be deleted",
                    "activate another model or roll back first",
                )

            def change(state: dict[str, Any]) -> None:
                del state["models"][entry.sha256]
                state["previous"] = [s for s in state["previous"] if s != entry.sha256]

            self._mutate(change)
            entry.path.unlink(missing_ok=True)
            return entry

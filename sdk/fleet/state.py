"""Rollout state in SQLite, written after every step, so a host that restarts resumes where it stopped.

Tables: ``rollouts`` (one row per rollout: artifact, manifest, waves, gate, state), ``waves`` (state, verdict,
host bytes published), ``devices`` (per device and rollout: wave, state, previous model, measurements, error).
Device states: pending → transferred → activated → measured → done; or failed; or rolled_back.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devicefit.errors import UserInputError
from devicefit.protos.manifest import utc_now

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
  id TEXT PRIMARY KEY, fleet TEXT, target TEXT, artifact TEXT, manifest TEXT, waves TEXT, gate TEXT,
  bench TEXT, state TEXT, error TEXT, created_at TEXT, updated_at TEXT);
CREATE TABLE IF NOT EXISTS waves (
  rollout_id TEXT, wave INTEGER, state TEXT, verdict TEXT, host_bytes INTEGER DEFAULT 0, started_at TEXT,
  finished_at TEXT, PRIMARY KEY (rollout_id, wave));
CREATE TABLE IF NOT EXISTS devices (
  rollout_id TEXT, device_id TEXT, wave INTEGER, state TEXT, prev_sha256 TEXT, prev_p90_ms REAL,
  p50_ms REAL, p90_ms REAL, peak_rss_mb REAL, model_id TEXT, error TEXT, updated_at TEXT,
  PRIMARY KEY (rollout_id, device_id));
"""
ROLLOUT_STATES = ("running", "succeeded", "rolled_back", "stopped", "failed")


@dataclass
class DeviceRow:
    device_id: str
    wave: int
    state: str = "pending"
    prev_sha256: str | None = None
    prev_p90_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    peak_rss_mb: float | None = None
    model_id: str | None = None
    error: str | None = None
    updated_at: str = ""


@dataclass
class Rollout:
    id: str
    fleet: str
    target: str
    artifact: str
    manifest: dict[str, Any]
    waves: list[float]
    gate: dict[str, Any]
    bench: dict[str, Any]
    state: str = "running"
    error: str | None = None
    created_at: str = ""
    updated_at: str = ""
    devices: list[DeviceRow] = field(default_factory=list)
    wave_rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "fleet": self.fleet, "target": self.target, "artifact": self.artifact,
            "model_id": self.manifest.get("model_id"), "sha256": self.manifest.get("sha256"),
            "size_bytes": self.manifest.get("size_bytes"), "waves": self.waves, "gate": self.gate,
            "state": self.state, "error": self.error, "created_at": self.created_at, "updated_at": self.updated_at,
            "wave_status": self.wave_rows, "devices": [vars(d) for d in self.devices],
        }


class RolloutStore:
    """The SQLite file holding every rollout of this host (safe to share between threads)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def create(self, *, fleet: str, target: str, artifact: str, manifest: dict[str, Any], waves: list[float],
               gate: dict[str, Any], bench: dict[str, Any], assignment: dict[str, int]) -> str:
        rid = "r-" + uuid.uuid4().hex[:10]
        now = utc_now()
        with self._tx() as db:
            db.execute("INSERT INTO rollouts VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                       (rid, fleet, target, artifact, json.dumps(manifest), json.dumps(waves), json.dumps(gate),
                        json.dumps(bench), "running", None, now, now))
            for i in range(len(waves)):
                db.execute("INSERT INTO waves (rollout_id, wave, state) VALUES (?,?,?)", (rid, i, "pending"))
            for dev, wave in assignment.items():
                db.execute("INSERT INTO devices (rollout_id, device_id, wave, state, updated_at) VALUES (?,?,?,?,?)",
                           (rid, dev, wave, "pending", now))
        return rid

    def load(self, rid: str) -> Rollout:
        with self._lock:
            row = self._db.execute("SELECT * FROM rollouts WHERE id=?", (rid,)).fetchone()
            if row is None:
                known = [r[0] for r in self._db.execute("SELECT id FROM rollouts ORDER BY created_at DESC LIMIT 5")]
                raise UserInputError(f"no rollout {rid!r} in {self.path}", f"pick one of {known} (devicefit fleet status)")
            cols = [d[0] for d in self._db.execute("SELECT * FROM devices LIMIT 0").description]
            devs = [DeviceRow(**{k: v for k, v in zip(cols, r, strict=True) if k != "rollout_id"})
                    for r in self._db.execute("SELECT * FROM devices WHERE rollout_id=? ORDER BY wave, device_id", (rid,))]
            waves = [{"wave": w, "state": s, "verdict": json.loads(v) if v else None, "host_bytes": b,
                      "started_at": st, "finished_at": fi}
                     for w, s, v, b, st, fi in self._db.execute(
                         "SELECT wave, state, verdict, host_bytes, started_at, finished_at FROM waves "
                         "WHERE rollout_id=? ORDER BY wave", (rid,))]
        r = Rollout(id=row[0], fleet=row[1], target=row[2], artifact=row[3], manifest=json.loads(row[4]),
                    waves=json.loads(row[5]), gate=json.loads(row[6]), bench=json.loads(row[7]), state=row[8],
                    error=row[9], created_at=row[10], updated_at=row[11], devices=devs, wave_rows=waves)
        return r

    def ids(self, *, fleet: str | None = None) -> list[str]:
        with self._lock:
            q = "SELECT id FROM rollouts" + (" WHERE fleet=?" if fleet else "") + " ORDER BY created_at DESC"
            return [r[0] for r in self._db.execute(q, (fleet,) if fleet else ())]

    def set_rollout(self, rid: str, *, state: str, error: str | None = None) -> None:
        assert state in ROLLOUT_STATES, state
        with self._tx() as db:
            db.execute("UPDATE rollouts SET state=?, error=?, updated_at=? WHERE id=?", (state, error, utc_now(), rid))

    def set_wave(self, rid: str, wave: int, *, state: str, verdict: dict[str, Any] | None = None,
                 add_bytes: int = 0) -> None:
        now = utc_now()
        with self._tx() as db:
            db.execute(
                "UPDATE waves SET state=?, verdict=COALESCE(?, verdict), host_bytes=host_bytes+?, "
                "started_at=COALESCE(started_at, ?), finished_at=CASE WHEN ? IN ('passed','failed','rolled_back') "
                "THEN ? ELSE finished_at END WHERE rollout_id=? AND wave=?",
                (state, json.dumps(verdict) if verdict is not None else None, add_bytes, now, state, now, rid, wave))

    def set_device(self, rid: str, device_id: str, **fields: Any) -> None:
        cols = {k: v for k, v in fields.items() if k in DeviceRow.__dataclass_fields__ and k not in ("device_id", "wave")}
        cols["updated_at"] = utc_now()
        with self._tx() as db:
            db.execute(f"UPDATE devices SET {', '.join(f'{k}=?' for k in cols)} WHERE rollout_id=? AND device_id=?",
                       (*cols.values(), rid, device_id))

    def close(self) -> None:
        self._db.close()

"""Measurement store: every latency measured on a device, kept across runs (SQLite).

Default file: ``$DEVICEFIT_CACHE/measurements.db`` or ``~/.cache/devicefit/measurements.db``; pass a path
(or set ``DEVICEFIT_MEASUREMENTS_DB``) to move it. One row per measurement: device and profile id, model
hash, plan hash (+ the plan itself), runtime and versions, threads, p50/p90/mean, peak RSS (whole process)
and the model's own memory, per-node times and their
per-layer attribution (JSON), what the latency model predicted before measuring, metric drop and size of
the candidate, and a timestamp. ``find`` returns earlier measurements of the same (device, model, plan,
runtime versions, threads) so a search does not measure the same candidate twice.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devicefit.kernels.paths import cache_root

SCHEMA = """
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    profile_id TEXT NOT NULL DEFAULT '',
    model_hash TEXT NOT NULL,
    plan_hash TEXT NOT NULL,
    plan_json TEXT NOT NULL DEFAULT '{}',
    runtime TEXT NOT NULL DEFAULT '',
    runtime_versions TEXT NOT NULL DEFAULT '{}',
    threads INTEGER NOT NULL DEFAULT 0,
    batch_size INTEGER NOT NULL DEFAULT 1,
    p50_ms REAL NOT NULL,
    p90_ms REAL,
    mean_ms REAL,
    peak_rss_mb REAL,
    per_node TEXT NOT NULL DEFAULT '[]',
    per_layer TEXT NOT NULL DEFAULT '{}',
    other_ms REAL,
    profiled_e2e_ms REAL,
    predicted_ms REAL,
    size_bytes INTEGER,
    metric_name TEXT,
    metric_drop REAL,
    source TEXT NOT NULL DEFAULT '',
    role TEXT NOT NULL DEFAULT 'candidate',
    ref_ms REAL,
    load REAL,
    model_memory_mb REAL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS measurements_key ON measurements (device_id, model_hash, plan_hash);
"""


def default_path() -> Path:
    """``DEVICEFIT_MEASUREMENTS_DB``, else ``$DEVICEFIT_CACHE/measurements.db``, else ~/.cache/devicefit/."""
    env = os.environ.get("DEVICEFIT_MEASUREMENTS_DB")
    if env:
        return Path(env)
    return cache_root() / "measurements.db"


@dataclass
class Measurement:
    """One measured candidate on one device."""

    device_id: str
    model_hash: str
    plan_hash: str
    p50_ms: float
    profile_id: str = ""
    plan: dict[str, Any] = field(default_factory=dict)
    runtime: str = ""
    runtime_versions: dict[str, str] = field(default_factory=dict)
    threads: int = 0
    batch_size: int = 1
    p90_ms: float | None = None
    mean_ms: float | None = None
    peak_rss_mb: float | None = None
    per_node: list[dict[str, Any]] = field(default_factory=list)
    per_layer: dict[str, float] = field(default_factory=dict)
    other_ms: float | None = None
    profiled_e2e_ms: float | None = None
    predicted_ms: float | None = None
    size_bytes: int | None = None
    metric_name: str | None = None
    metric_drop: float | None = None
    source: str = ""
    #: "baseline" | "probe" (calibration; never reused for a candidate) | "candidate"
    role: str = "candidate"
    #: the load reference's p50 at load 1 in the session that measured this (its fp32 baseline), and the
    #: device load then relative to it: a measurement is reused only where the reference runs alike
    ref_ms: float | None = None
    load: float | None = None
    #: the model's own peak memory on the agent (MB; ``peak_rss_mb`` is the whole process's); None = unknown
    model_memory_mb: float | None = None
    created_at: float = field(default_factory=time.time)
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_JSON_COLS = {"plan": "plan_json", "runtime_versions": "runtime_versions", "per_node": "per_node", "per_layer": "per_layer"}


class MeasurementStore:
    """SQLite-backed store; safe to share between processes on one host (WAL, busy timeout)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._conn() as conn:
            conn.executescript(SCHEMA)
            cols = {r[1] for r in conn.execute("PRAGMA table_info(measurements)")}
            # a store written by an earlier version
            for col, decl in (("role", "TEXT NOT NULL DEFAULT 'candidate'"), ("ref_ms", "REAL"), ("load", "REAL"),
                              ("model_memory_mb", "REAL")):
                if col not in cols:
                    conn.execute(f"ALTER TABLE measurements ADD COLUMN {col} {decl}")

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=60.0)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.row_factory = sqlite3.Row
            yield conn
            conn.commit()
        finally:
            conn.close()

    def add(self, m: Measurement) -> int:
        """Insert ``m``; returns (and sets) its row id."""
        row = m.to_dict()
        row.pop("id")
        for attr, col in _JSON_COLS.items():
            row[col] = json.dumps(row.pop(attr), default=str)
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._conn() as conn:
            cur = conn.execute(f"INSERT INTO measurements ({cols}) VALUES ({marks})", tuple(row.values()))
            m.id = int(cur.lastrowid or 0)
        return m.id

    @staticmethod
    def _from_row(r: sqlite3.Row) -> Measurement:
        d = dict(r)
        for attr, col in _JSON_COLS.items():
            d[attr] = json.loads(d.pop(col) or "null") or ({} if attr != "per_node" else [])
        return Measurement(**d)

    def query(self, *, device_id: str | None = None, model_hash: str | None = None, plan_hash: str | None = None,
              limit: int | None = None) -> list[Measurement]:
        """Rows matching the given keys, newest first."""
        where, args = [], []
        for col, val in (("device_id", device_id), ("model_hash", model_hash), ("plan_hash", plan_hash)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        sql = "SELECT * FROM measurements"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        with self._conn() as conn:
            return [self._from_row(r) for r in conn.execute(sql, args).fetchall()]

    def find(self, *, device_id: str, model_hash: str, plan_hash: str, runtime: str | None = None,
             runtime_versions: Mapping[str, str] | None = None, threads: int | None = None,
             batch_size: int = 1, ref_ms: float | None = None, ref_tolerance: float = 0.1) -> Measurement | None:
        """The newest earlier measurement of this exact candidate on this device and runtime at this batch
        size, if any (calibration probes are not reused; with ``runtime``, only one run on that runner — the
        same plan exported to ONNX and to TFLite are two files). With ``ref_ms`` (this session's load reference
        level): only one made where the reference ran within ``ref_tolerance`` of it, and while the device
        ran within ``ref_tolerance`` of that level (the measurement's own ``load``) — on a shared machine a p50
        from another hour, or from a loaded minute of it, is another machine's."""
        for m in self.query(device_id=device_id, model_hash=model_hash, plan_hash=plan_hash):
            if m.role == "probe" or m.batch_size != batch_size:
                continue
            if ref_ms is not None and (m.ref_ms is None or abs(m.ref_ms / ref_ms - 1.0) > ref_tolerance):
                continue
            if ref_ms is not None and m.load is not None and abs(m.load - 1.0) > ref_tolerance:
                continue
            if runtime is not None and m.runtime and m.runtime != runtime:
                continue
            if runtime_versions is not None and m.runtime_versions and dict(runtime_versions) != m.runtime_versions:
                continue
            if threads is not None and m.threads != threads:
                continue
            return m
        return None

    def count(self) -> int:
        with self._conn() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0])

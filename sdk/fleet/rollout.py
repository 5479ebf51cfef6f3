"""Running a rollout, wave by wave, from its persisted state (so the same code starts and resumes it).

Per wave: record each device's active model (its rollback target) → deliver the artifact (MQTT: published
once for the wave) → activate it (the agent loads it and runs it once; a failure leaves the old one active) →
benchmark the new and the previous model there, back to back, with the agent's own benchmark → gate. A wave
that fails the gate is rolled back (each of its devices that runs the new model activates its previous one)
and the rollout stops. Every step is written to the SQLite state before the next begins; a device's state
says which steps are done, so a resumed rollout neither repeats them nor re-sends what a device stored.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from devicefit.errors import DevicefitError, UserInputError
from devicefit.fleet.backends import Backend
from devicefit.fleet.gate import DeviceResult, Gate, evaluate
from devicefit.fleet.state import DeviceRow, Rollout, RolloutStore
from devicefit.protos.manifest import Manifest

#: progress(wave index, number of waves, phase, wave devices)
ProgressFn = Callable[[int, int, str, int], None]


def check_waves(waves: Sequence[float]) -> list[float]:
    w = [float(x) for x in waves]
    if not w or any(not 0 < x <= 1 for x in w) or any(b <= a for a, b in itertools.pairwise(w)) or w[-1] != 1.0:
        raise UserInputError(f"waves {list(waves)} are not increasing fractions ending at 1.0",
                             "pass e.g. waves=[0.05, 0.25, 1.0] (cumulative share of the selected devices)")
    return w


def assign_waves(device_ids: Sequence[str], waves: Sequence[float]) -> dict[str, int]:
    """Device -> wave index: wave i holds the devices up to ceil(waves[i] * N) (at least one new device each)."""
    ids = sorted(device_ids)
    out: dict[str, int] = {}
    done = 0
    for i, frac in enumerate(waves):
        upto = min(len(ids), max(done + 1, math.ceil(frac * len(ids))))
        for d in ids[done:upto]:
            out[d] = i
        done = upto
    return out


def _err(exc: BaseException) -> str:
    return str(getattr(exc, "problem", None) or exc)


class RolloutRunner:
    """Drives one rollout through ``backend``, persisting every step in ``store``."""

    def __init__(self, store: RolloutStore, backend: Backend, rid: str, *, concurrency: int = 4,
                 progress: ProgressFn | None = None) -> None:
        self.store, self.backend, self.rid = store, backend, rid
        self.concurrency, self.progress = concurrency, progress

    def _each(self, rows: Sequence[DeviceRow], fn: Callable[[DeviceRow], None]) -> None:
        """Run ``fn`` per device (bounded concurrency); an error marks that device failed."""
        def safe(row: DeviceRow) -> None:
            try:
                fn(row)
            except DevicefitError as exc:
                self.store.set_device(self.rid, row.device_id, state="failed", error=_err(exc))
            except Exception as exc:
                self.store.set_device(self.rid, row.device_id, state="failed", error=f"{type(exc).__name__}: {exc}")

        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            list(pool.map(safe, rows))

    def _rows(self, wave: int, *states: str) -> list[DeviceRow]:
        return [d for d in self.store.load(self.rid).devices if d.wave == wave and (not states or d.state in states)]

    def _note(self, wave: int, n_waves: int, phase: str, n: int) -> None:
        if self.progress is not None:
            self.progress(wave, n_waves, phase, n)

    def run(self) -> Rollout:
        r = self.store.load(self.rid)
        if r.state != "running":
            return r
        m = Manifest.from_dict(r.manifest)
        path, gate = Path(r.artifact), Gate.from_dict(r.gate)
        runs, warmup = int(r.bench.get("runs", 20)), int(r.bench.get("warmup", 3))
        if not path.is_file():
            raise UserInputError(f"rollout {self.rid}: artifact {path} is gone", "restore the file, then resume")
        n = len(r.waves)
        for w in range(n):
            if r.wave_rows[w]["state"] == "passed":
                continue
            self.store.set_wave(self.rid, w, state="running")
            self._note(w, n, "deploy", len(self._rows(w)))
            self._wave(w, path, m, runs=runs, warmup=warmup)
            rows = self._rows(w)
            verdict = evaluate(gate, [DeviceResult(d.device_id, d.state == "measured", d.p90_ms, d.prev_p90_ms)
                                      for d in rows])
            if not verdict.ok:
                self._note(w, n, "rollback", len(rows))
                self.store.set_wave(self.rid, w, state="failed", verdict=verdict.to_dict())
                self.rollback_rows(rows, m.sha256)
                self.store.set_wave(self.rid, w, state="rolled_back")
                self.store.set_rollout(self.rid, state="rolled_back", error=f"wave {w + 1}: " + "; ".join(verdict.reasons))
                return self.store.load(self.rid)
            for d in rows:
                if d.state == "measured":
                    self.store.set_device(self.rid, d.device_id, state="done")
            self.store.set_wave(self.rid, w, state="passed", verdict=verdict.to_dict())
            self._note(w, n, "passed", len(rows))
            r = self.store.load(self.rid)
        self.store.set_rollout(self.rid, state="succeeded")
        return self.store.load(self.rid)

    def _wave(self, w: int, path: Path, m: Manifest, *, runs: int, warmup: int) -> None:
        be, rid = self.backend, self.rid

        def previous(row: DeviceRow) -> None:  # the rollback target, recorded before anything changes
            if not be.online(row.device_id):
                raise UserInputError(f"device {row.device_id} is offline", "bring it back, then resume the rollout")
            active = be.transport(row.device_id).list_models()["active_sha256"] or ""
            self.store.set_device(rid, row.device_id, prev_sha256=active)

        self._each([d for d in self._rows(w, "pending") if d.prev_sha256 is None], previous)
        todo = [d.device_id for d in self._rows(w, "pending")]
        if todo:
            outcomes, sent = be.deliver(todo, path, m)
            self.store.set_wave(rid, w, state="running", add_bytes=sent)
            for dev, o in outcomes.items():
                self.store.set_device(rid, dev, state="transferred" if o.ok else "failed", error=o.error or None)

        def activate(row: DeviceRow) -> None:
            be.transport(row.device_id).activate(m.sha256)
            self.store.set_device(rid, row.device_id, state="activated", model_id=m.model_id)

        self._each(self._rows(w, "transferred"), activate)

        def measure(row: DeviceRow) -> None:
            t = be.transport(row.device_id)
            new = t.benchmark(m.sha256, runs=runs, warmup=warmup)
            prev = t.benchmark(row.prev_sha256, runs=runs, warmup=warmup) if row.prev_sha256 and \
                row.prev_sha256 != m.sha256 else None
            self.store.set_device(rid, row.device_id, state="measured", p50_ms=new.p50_ms, p90_ms=new.p90_ms,
                                  peak_rss_mb=new.peak_rss_mb, prev_p90_ms=prev.p90_ms if prev else None)

        self._each(self._rows(w, "activated"), measure)

    def rollback_rows(self, rows: Sequence[DeviceRow], new_sha: str) -> None:
        """Put each device that runs ``new_sha`` back on its recorded previous model (idempotent)."""
        be, rid = self.backend, self.rid

        def back(row: DeviceRow) -> None:
            if not be.online(row.device_id):
                if row.state != "failed":
                    self.store.set_device(rid, row.device_id, state="failed", error="offline during rollback")
                return
            t = be.transport(row.device_id)
            if t.list_models()["active_sha256"] == new_sha:
                if not row.prev_sha256:
                    self.store.set_device(rid, row.device_id, state="failed",
                                          error="no previous model to roll back to")
                    return
                t.activate(row.prev_sha256)
            if row.state != "failed" or row.error is None:
                self.store.set_device(rid, row.device_id, state="rolled_back")

        def guarded(row: DeviceRow) -> None:
            try:
                back(row)
            except DevicefitError as exc:
                self.store.set_device(rid, row.device_id, state="failed", error=f"rollback failed: {_err(exc)}")

        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            list(pool.map(guarded, [r for r in rows if r.prev_sha256 is not None]))


def summary(r: Rollout) -> dict[str, Any]:
    """Counts of device states per wave (the CLI's progress / status line)."""
    out: dict[str, Any] = {"id": r.id, "state": r.state, "waves": []}
    for row in r.wave_rows:
        states: dict[str, int] = {}
        for d in r.devices:
            if d.wave == row["wave"]:
                states[d.state] = states.get(d.state, 0) + 1
        out["waves"].append({"wave": row["wave"] + 1, "state": row["state"], "devices": states,
                             "host_bytes": row["host_bytes"]})
    return out

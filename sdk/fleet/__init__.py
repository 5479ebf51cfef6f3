"""Fleets: many devices behind a broker (or a list of gRPC agents), rolled out to in waves gated by the latency
measured on the devices themselves.

    fleet = devicefit.Fleet("mqtt://broker:1883", fleet="plant-a")
    fleet.devices(select={"site": "north"})
    r = fleet.rollout("out/model.onnx", waves=[0.05, 0.25, 1.0], gate=Gate(max_p90_ms=20, max_regression=1.10))
    fleet.status(r.id); fleet.rollback(r.id); fleet.resume(r.id)

Rollout state lives in SQLite (``state=``, default ``~/.devicefit/fleet.sqlite``), so a restarted host resumes.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

from devicefit.artifact import Artifact
from devicefit.errors import DevicefitError, UserInputError
from devicefit.fleet.backends import Backend, FleetDevice, GrpcBackend, MqttBackend
from devicefit.fleet.gate import Gate
from devicefit.fleet.report import write_report
from devicefit.fleet.rollout import ProgressFn, RolloutRunner, assign_waves, check_waves
from devicefit.fleet.state import Rollout, RolloutStore
from devicefit.protos.manifest import Manifest

__all__ = ["Fleet", "FleetDevice", "Gate", "Rollout", "default_state_path"]

Select = Mapping[str, str] | Callable[[FleetDevice], bool] | None


def default_state_path() -> Path:
    return Path(os.environ.get("DEVICEFIT_FLEET_STATE") or Path.home() / ".devicefit" / "fleet.sqlite")


def _matches(d: FleetDevice, select: Select) -> bool:
    if select is None:
        return True
    if callable(select):
        return bool(select(d))
    for k, v in select.items():
        have = d.profile if k == "profile" else d.tags.get(k)
        if have != v:
            return False
    return True


class Fleet:
    """A fleet reached through an MQTT broker (``mqtt[s]://…`` + ``fleet=``) or a list of ``grpc://`` URLs."""

    def __init__(self, target: str | Sequence[str], *, fleet: str | None = None, state: str | Path | None = None,
                 connect_timeout: float = 10.0, concurrency: int = 4) -> None:
        urls = [target] if isinstance(target, str) else list(target)
        self.backend: Backend
        if len(urls) == 1 and urls[0].startswith(("mqtt://", "mqtts://")):
            from devicefit.protos.topics import BrokerUrl

            name = fleet or BrokerUrl.parse(urls[0]).fleet
            if not name:
                raise UserInputError(f"no fleet named for broker {urls[0]}", "pass fleet=NAME (--fleet NAME)")
            self.backend = MqttBackend(urls[0], fleet=name, connect_timeout=connect_timeout)
        elif urls and all(u.startswith("grpc://") for u in urls):
            self.backend = GrpcBackend(urls, fleet=fleet or "inventory", connect_timeout=connect_timeout)
        else:
            raise UserInputError(f"fleet target {target!r} is neither one mqtt[s]:// broker nor grpc:// URLs",
                                 "pass mqtt://HOST:PORT with fleet=NAME, or a list of grpc://HOST:PORT")
        self.name, self.concurrency = self.backend.fleet, concurrency
        self.store = RolloutStore(state or default_state_path())

    # ---- devices -----------------------------------------------------------------------------------
    def devices(self, select: Select = None, *, online: bool | None = None) -> list[FleetDevice]:
        """Devices matching ``select`` (tag / ``profile`` values, or a predicate) and ``online`` (None: any)."""
        return [d for d in self.backend.devices()
                if _matches(d, select) and (online is None or d.online == online)]

    # ---- rollouts ----------------------------------------------------------------------------------
    def rollout(self, artifact: str | Path | Artifact, *, waves: Sequence[float] = (0.05, 0.25, 1.0),
                gate: Gate | None = None, select: Select = None, runs: int = 20, warmup: int = 3,
                report_dir: str | Path | None = None, progress: ProgressFn | None = None,
                start: bool = True) -> Rollout:
        """Roll ``artifact`` out to the selected online devices in ``waves`` (cumulative fractions), gated."""
        w = check_waves(waves)
        art = artifact if isinstance(artifact, Artifact) else None
        path = Path(art.path if art else artifact).resolve()  # type: ignore[arg-type]
        manifest = art.manifest if art else Manifest.for_file(path)
        targets = [d.device_id for d in self.devices(select, online=True)]
        if not targets:
            raise UserInputError(f"no online device in fleet {self.name} matches {select!r}",
                                 "check `devicefit fleet ls` and the selection")
        rid = self.store.create(fleet=self.name, target=self.backend.target, artifact=str(path),
                                manifest=manifest.to_dict(), waves=w,
                                gate=(gate or Gate()).to_dict(), bench={"runs": runs, "warmup": warmup},
                                assignment=assign_waves(targets, w))
        if not start:
            return self.store.load(rid)
        return self._run(rid, report_dir=report_dir, progress=progress)

    def _run(self, rid: str, *, report_dir: str | Path | None, progress: ProgressFn | None) -> Rollout:
        try:
            r = RolloutRunner(self.store, self.backend, rid, concurrency=self.concurrency, progress=progress).run()
        except DevicefitError as exc:
            self.store.set_rollout(rid, state="stopped", error=exc.problem)
            raise
        if report_dir is not None:
            write_report(r, report_dir)
        return r

    def status(self, rollout_id: str | None = None) -> Rollout:
        """A rollout's persisted state (the newest of this fleet when ``rollout_id`` is None)."""
        if rollout_id is None:
            ids = self.store.ids(fleet=self.name)
            if not ids:
                raise UserInputError(f"no rollout of fleet {self.name} in {self.store.path}", "start one with rollout()")
            rollout_id = ids[0]
        return self.store.load(rollout_id)

    def resume(self, rollout_id: str, *, report_dir: str | Path | None = None,
               progress: ProgressFn | None = None) -> Rollout:
        """Continue a rollout that a stopped or killed host left running (no step is repeated)."""
        r = self.store.load(rollout_id)
        if r.state == "stopped":
            self.store.set_rollout(rollout_id, state="running")
        return self._run(rollout_id, report_dir=report_dir, progress=progress)

    def rollback(self, rollout_id: str, *, report_dir: str | Path | None = None) -> Rollout:
        """Put every device of the rollout that runs its model back on the model it ran before."""
        r = self.store.load(rollout_id)
        runner = RolloutRunner(self.store, self.backend, rollout_id, concurrency=self.concurrency)
        runner.rollback_rows([d for d in r.devices if d.state != "pending"], str(r.manifest["sha256"]))
        self.store.set_rollout(rollout_id, state="rolled_back", error=r.error)
        r = self.store.load(rollout_id)
        if report_dir is not None:
            write_report(r, report_dir)
        return r

    # ---- profiling ---------------------------------------------------------------------------------
    def bench(self, path: str | Path, *, select: Select = None, runs: int = 50, warmup: int = 5,
              min_seconds: float = 0.0) -> dict[str, Any]:
        """Measure one model file on every selected online device (stored there, not activated)."""
        p = Path(path)
        manifest = Manifest.for_file(p)
        ids = [d.device_id for d in self.devices(select, online=True)]
        delivered, sent = self.backend.deliver(ids, p, manifest)

        def one(dev: str) -> dict[str, Any]:
            if not delivered[dev].ok:
                return {"device_id": dev, "error": delivered[dev].error}
            try:
                rep = self.backend.transport(dev).benchmark(manifest.sha256, runs=runs, warmup=warmup,
                                                            min_seconds=min_seconds)
            except DevicefitError as exc:
                return {"device_id": dev, "error": exc.problem}
            return {"device_id": dev, "p50_ms": rep.p50_ms, "p90_ms": rep.p90_ms, "peak_rss_mb": rep.peak_rss_mb,
                    "model_memory_mb": rep.own_memory_mb}

        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            rows = list(pool.map(one, ids))
        p90 = sorted(r["p90_ms"] for r in rows if "p90_ms" in r)
        p50 = sorted(r["p50_ms"] for r in rows if "p50_ms" in r)
        dist = {k: {"min": v[0], "median": statistics.median(v), "max": v[-1]} for k, v in (("p50_ms", p50),
                                                                                        ("p90_ms", p90)) if v}
        return {"model_id": manifest.model_id, "sha256": manifest.sha256, "devices": rows, "distribution": dist,
                "failed": sum("error" in r for r in rows), "host_bytes": sent, "size_bytes": manifest.size_bytes}

    def close(self) -> None:
        self.backend.close()
        self.store.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

"""Optuna plumbing of a search: storage (SQLite tuned for many small writes, or any RDB URL), the
two-objective study with its constraints, and reading back what every process recorded."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import optuna

from devicefit.compressor.search.candidate import Candidate, pareto_front
from devicefit.compressor.search.problem import SearchProblem

CONSTRAINTS = ("latency", "size", "memory", "accuracy_drop")
#: study attributes ``PREFIX:worker`` (its fp32 baseline's p50) and ``PREFIX:worker:plan_hash`` (a candidate it
#: measured after the candidate's trial had finished), written by :func:`~.trials.record_measured`
FP32_ATTR = "devicefit_fp32"
MEASURED_ATTR = "devicefit_measured"


def make_sampler(seed: int | None = 0, *, startup: int = 10) -> optuna.samplers.BaseSampler:
    """Multi-objective TPE; it reads each trial's constraints (``Trial.set_constraint``, Optuna ≥ 5)."""
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def worker_seed(seed: int | None, worker_id: str) -> int:
    """A ``search-worker``'s sampler seed: distinct per worker (the same seed in every process would propose the
    same start-up trials everywhere, and each would be measured once and then only looked up), fixed per id."""
    return (zlib.crc32(worker_id.encode()) ^ (seed or 0)) & 0x7FFFFFFF


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """Optuna RDB storage for ``url``. SQLite files get WAL + ``synchronous=NORMAL`` (a trial writes dozens
    of rows; an fsync per row costs ~10 ms) and a long busy timeout so several processes can share one."""
    if not url.startswith("sqlite"):
        return optuna.storages.RDBStorage(url)
    from sqlalchemy import event

    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})

    def pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    event.listen(storage.engine, "connect", pragmas)
    storage.engine.dispose()
    return storage


def open_study(storage: str, name: str, *, seed: int | None = 0, create: bool = True) -> optuna.Study:
    """Create (or join) the two-objective study ``name`` at ``storage`` (an Optuna RDB URL)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = make_sampler(seed)
    store = make_storage(storage)
    if create:
        return optuna.create_study(storage=store, study_name=name, directions=["minimize", "minimize"],
                                   sampler=sampler, load_if_exists=True)
    return optuna.load_study(storage=store, study_name=name, sampler=sampler)


def _candidate(a: dict[str, Any], trial: int, labels: dict[str, str]) -> Candidate:
    return Candidate(trial=trial, labels=labels, plan_hash=str(a.get("plan_hash")),
                     predicted_ms=float(a["predicted_ms"]), predicted_size_bytes=float(a["predicted_size_bytes"]),
                     predicted_memory_mb=float(a["predicted_memory_mb"]), predicted_drop=float(a["predicted_drop"]),
                     uncalibrated=tuple(a.get("uncalibrated", ())), measured_ms=a.get("measured_ms"),
                     p90_ms=a.get("p90_ms"), measured_memory_mb=a.get("memory_mb"), size_bytes=a.get("size_bytes"),
                     metric=a.get("metric"), device=str(a.get("device") or ""), error=a.get("error"),
                     tags=list(a.get("tags", [])))


def candidates_from_study(study: optuna.Study, problem: SearchProblem, *, fp32_ms: float | None = None) -> list[Candidate]:
    """Candidates recorded by every process that worked on ``study`` (measured ones carry their numbers).

    With ``fp32_ms`` (this process's fp32 p50), a latency another process measured is brought to this
    process's scale through that process's own fp32 ratio — measured ÷ its fp32 × ``fp32_ms`` — so boards of one
    kind whose speed differs a little (or a lot: a slower unit, a warmer room) are compared fairly."""
    attrs = study.user_attrs
    base = {k.split(":", 1)[1]: float(v) for k, v in attrs.items() if k.startswith(f"{FP32_ATTR}:")}
    out: dict[str, Candidate] = {}
    records = [(a, t.number, {k: str(v) for k, v in t.params.items()})
               for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
               if "predicted_ms" in (a := t.user_attrs.get("devicefit", {}))]
    records += [(a, int(a["trial"]), dict(a["labels"])) for k, a in attrs.items() if k.startswith(f"{MEASURED_ATTR}:")]
    for a, trial, labels in records:
        c = _candidate(a, trial, labels)
        own = base.get(str(a.get("worker")))
        if c.measured_ms is not None and fp32_ms is not None and own:
            scale = fp32_ms / own
            c.measured_ms *= scale
            c.p90_ms = c.p90_ms * scale if c.p90_ms is not None else None
        c.reused = c.measured
        seen = out.get(c.plan_hash)
        if seen is None or (c.measured and not seen.measured):  # a measured record of a plan wins
            out[c.plan_hash] = c
    return list(out.values())


def front(cands: list[Candidate]) -> list[Candidate]:
    """The (latency, drop) Pareto front of error-free candidates."""
    ok = [c for c in cands if c.error is None]
    idx = pareto_front([(c.latency_ms, c.drop) for c in ok])
    return [ok[i] for i in idx]


def default_storage(out_dir: Path) -> str:
    return f"sqlite:///{(out_dir / 'study.db').resolve()}"

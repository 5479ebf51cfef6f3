"""``devicefit search-worker``: join a running study and contribute trials.

A fit stores everything a worker needs to rebuild the problem as the study's user attribute
``devicefit_spec`` (model spec, data, profile, device URL, budgets, search space, loop settings). A worker
loads the model, measures its own fp32 baseline on its device (or host), and runs trials against the
shared study; the study's TPE sampler sees every process's results. Any Optuna RDB URL works: a SQLite
file for processes on one host, ``postgresql://user:pass@host/db`` or ``mysql+pymysql://…`` (install the
driver: ``pip install psycopg2-binary`` / ``pymysql``) for workers on many hosts.
"""

from __future__ import annotations

from typing import Any

import optuna

from devicefit.compressor.search.session import FitSession
from devicefit.compressor.search.trials import record_measured
from devicefit.errors import UserInputError

SPEC_ATTR = "devicefit_spec"


def read_spec(study: optuna.Study) -> dict[str, Any]:
    """The fit spec a study was created with."""
    spec = study.user_attrs.get(SPEC_ATTR)
    if not isinstance(spec, dict):
        raise UserInputError(
            f"study {study.study_name!r} has no devicefit spec",
            "start the study with `devicefit fit` (or devicefit.fit) first, then join it with search-worker",
        )
    return dict(spec)


def join_study(session: FitSession, study: optuna.Study, *, worker_id: str) -> int:
    """Run ``session``'s search and exploit phases against ``study`` without enqueuing seeds; every trial is
    tagged with ``worker_id``, and what the exploit phase measured is shared through the study with this
    board's fp32 p50 (:func:`.trials.record_measured`). Returns the number of trials this process ran."""
    before = len(session.candidates)
    session.worker_id = worker_id
    fp32 = session.measures.fp32()
    fp32_ms = fp32.measured_ms if fp32 is not None else None
    record_measured(study, [], session.budget, worker_id, fp32_ms)  # before the trials: they carry this scale
    session.search(study, enqueue=False)
    session.exploit()
    record_measured(study, [c for c in session.measures.measured() if c is not fp32], session.budget, worker_id, fp32_ms)
    return len(session.candidates) - before

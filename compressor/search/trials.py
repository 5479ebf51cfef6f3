"""The Optuna adapter, alone: trials suggest per-layer labels, the engine turns them into candidates.

Two objectives, both minimized — metric drop and latency — with every budget as an Optuna constraint
(``Trial.set_constraint``, read by ``TPESampler``; Optuna 5 deprecated ``constraints_func``): latency, size,
peak memory, accuracy drop (≤ 0 = met). Each trial carries the candidate's numbers as the user attribute
``devicefit`` (:func:`~.studydb.candidates_from_study` reads them back for every process of the study).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import optuna

from devicefit.compressor.search.candidate import Budget, Candidate
from devicefit.compressor.search.space import SearchSpace
from devicefit.compressor.search.studydb import CONSTRAINTS, FP32_ATTR, MEASURED_ATTR

#: labels, trial number -> the candidate (predicted, measured when the engine chose to)
Consider = Callable[[dict[str, str], int], Candidate]


def trial_attrs(c: Candidate, budget: Budget, worker_id: str) -> dict[str, object]:
    """What a trial records of its candidate."""
    return {
        "worker": worker_id, "plan_hash": c.plan_hash, "predicted_ms": c.predicted_ms, "predicted_drop": c.predicted_drop,
        "predicted_size_bytes": c.predicted_size_bytes, "predicted_memory_mb": c.predicted_memory_mb,
        "uncalibrated": list(c.uncalibrated), "measured_ms": c.measured_ms, "p90_ms": c.p90_ms,
        "memory_mb": c.measured_memory_mb, "size_bytes": c.size_bytes, "metric": c.metric,
        "device": c.device, "error": c.error, "tags": c.tags,
        "constraints": [1.0, 1.0, 1.0, 1.0] if c.error else c.constraints(budget),
    }


def record_measured(study: optuna.Study, cands: Iterable[Candidate], budget: Budget, worker_id: str,
                    fp32_ms: float | None) -> None:
    """Share what this process measured outside its trials (exploit, confirm) and its fp32 baseline's p50: a
    finished trial's attributes cannot change, so they go into study attributes that
    :func:`~.studydb.candidates_from_study` merges (``fp32_ms`` lets other processes compare through this
    board's own fp32 ratio)."""
    if fp32_ms is not None:
        study.set_user_attr(f"{FP32_ATTR}:{worker_id}", float(fp32_ms))
    for c in cands:
        if c.measured and c.error is None:
            study.set_user_attr(f"{MEASURED_ATTR}:{worker_id}:{c.plan_hash}",
                                {**trial_attrs(c, budget, worker_id), "trial": c.trial, "labels": c.labels})


def optimize(study: optuna.Study, space: SearchSpace, consider: Consider, *, budget: Budget, worker_id: str,
             trials: int | None, deadline: float = math.inf, seeds: Iterable[dict[str, str]] = (),
             on_trial: Callable[[int, int, int], None] | None = None, stop: Callable[[], bool] | None = None) -> None:
    """Enqueue ``seeds``, then optimize until ``trials`` are done, ``deadline`` (``time.monotonic``) passes or
    ``stop()`` (asked after each trial) says there is no point going on."""
    for labels in seeds:
        study.enqueue_trial(labels, skip_if_exists=True)
    done = [0]

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        labels = {layer: str(trial.suggest_categorical(layer, space.labels(layer))) for layer in space.layers}
        cand = consider(labels, trial.number)
        attrs = trial_attrs(cand, budget, worker_id)
        trial.set_user_attr("devicefit", attrs)
        for name, value in zip(CONSTRAINTS, attrs["constraints"], strict=True):  # type: ignore[call-overload]
            trial.set_constraint(name, float(value))
        if time.monotonic() > deadline or (stop is not None and stop()):
            trial.study.stop()
        if cand.error:
            return 1.0, cand.predicted_ms * 10
        return cand.drop, cand.latency_ms

    def tick(_s: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        done[0] += 1
        if on_trial is not None:
            on_trial(done[0], trials or 0, t.number)

    timeout = max(1.0, deadline - time.monotonic()) if math.isfinite(deadline) else None
    study.optimize(objective, n_trials=trials, timeout=timeout, callbacks=[tick], catch=(Exception,))

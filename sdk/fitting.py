"""``devicefit.fit``: search for the best compressed model that meets a device's budget, proven by measurement.

    result = devicefit.fit("zoo:minilm-l6", profile="localhost", device="grpc://127.0.0.1:50051",
                           max_latency_ms=40, max_accuracy_drop=0.02)
    result.budget_met, result.latency_ms, result.out_dir  # out/: model.onnx manifest.json plan.yaml report.*

Phases: load → analyze (per-layer table, channel dependencies) → sensitivity (per layer × technique, cached)
→ baseline (fp32 export, measured) → search (Optuna study; predicted everywhere, measured where promising,
recalibrated after each measurement) → exploit → distill (winner with prune / low-rank parts) → write.
Budgets default to the profile's. ``budget_met`` is true only for a *measured* candidate within every
budget; otherwise the closest measured candidate is written with its shortfall (``BudgetNotMetError`` is
the CLI's exit 3; the Python API returns the result and leaves raising to ``result.raise_if_not_met()``).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devicefit.compressor.plan import Plan
from devicefit.compressor.search.candidate import Budget
from devicefit.compressor.search.space import SpaceConfig
from devicefit.errors import BudgetNotMetError, UserInputError
from devicefit.fit_phases import Phases
from devicefit.fit_prepare import FitSpec, Prepared, prepare

FORMATS = ("onnx",)


@dataclass
class FitResult:
    """The outcome of :func:`fit`: the written folder and its report (``to_dict()`` = report.json)."""

    out_dir: Path
    model_path: Path
    plan: Plan
    report: dict[str, Any]

    @property
    def budget_met(self) -> bool:
        return bool(self.report["result"]["budget_met"])

    @property
    def latency_ms(self) -> float:
        return float(self.report["result"]["latency"]["p50_ms"])

    @property
    def source(self) -> str:
        return str(self.report["result"]["latency"]["source"])

    @property
    def metric(self) -> dict[str, Any]:
        return dict(self.report["result"]["metric"])

    def to_dict(self) -> dict[str, Any]:
        return self.report

    def raise_if_not_met(self) -> None:
        if not self.budget_met:
            miss = self.report["result"].get("shortfall", {})
            raise BudgetNotMetError(
                f"no measured candidate met the budget; the closest misses {miss} (report: {self.out_dir / 'report.json'})",
                "relax a budget, allow more --trials / --minutes, or widen the search space",
            )

    def __repr__(self) -> str:
        r = self.report["result"]
        return (f"FitResult(budget_met={r['budget_met']}, p50={r['latency']['p50_ms']:.3f} ms ({r['latency']['source']}), "
                f"drop={r['metric']['drop']:.4f}, out={str(self.out_dir)!r})")


def _budget(profile: Any, *, latency: float | None, size: float | None, memory: float | None, drop: float | None) -> tuple[Budget, dict[str, str]]:
    b = getattr(profile, "budget", None)
    given = {"latency_ms": latency, "size_mb": size, "memory_mb": memory, "accuracy_drop": drop}
    defaults = {"latency_ms": getattr(b, "latency_ms", None), "size_mb": getattr(b, "storage_mb", None),
                "memory_mb": getattr(b, "memory_mb", None), "accuracy_drop": getattr(b, "accuracy_drop", None)}
    values = {k: (v if v is not None else defaults[k]) for k, v in given.items()}
    origin = {k: ("given" if given[k] is not None else "profile") for k in given}
    return Budget(**values), origin


def make_spec(
    model: Any,
    data: Any = None,
    *,
    profile: Any = "localhost",
    device: str | None = None,
    max_latency_ms: float | None = None,
    max_size_mb: float | None = None,
    max_memory_mb: float | None = None,
    max_accuracy_drop: float | None = None,
    trials: int | None = None,
    minutes: float | None = None,
    format: str = "onnx",
    max_measurements: int | None = None,
    space: SpaceConfig | None = None,
    seed: int = 0,
    sensitivity_samples: int | None = None,
    runs: int = 30,
    store: str | Path | None = None,
    batch_size: int = 1,
    threads: int | None = None,
) -> tuple[FitSpec, Any, dict[str, str]]:
    """Validate the arguments of :func:`fit`; returns (spec, profile, where each budget came from)."""
    if format not in FORMATS:
        raise UserInputError(f"format={format!r} is not supported by fit yet", f"use one of {', '.join(FORMATS)}")
    if trials is not None and trials < 1:
        raise UserInputError(f"trials={trials} is not positive", "pass trials >= 1")
    if minutes is not None and minutes <= 0:
        raise UserInputError(f"minutes={minutes} is not positive", "pass minutes > 0")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserInputError(f"batch_size={batch_size!r} is not a positive integer", "pass batch_size >= 1")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UserInputError(f"threads={threads!r} is not a positive integer", "pass threads >= 1, or None for the runner's default")
    if max_measurements is not None and max_measurements < 0:
        raise UserInputError(f"max_measurements={max_measurements} is negative", "pass 0 or more")
    from devicefit.device_profiles import load_profile

    prof = load_profile(profile)
    budget, origin = _budget(prof, latency=max_latency_ms, size=max_size_mb, memory=max_memory_mb, drop=max_accuracy_drop)
    spec = FitSpec(
        model=model if isinstance(model, str) else None,
        data=str(data) if isinstance(data, (str, Path)) else None,
        profile=str(profile) if isinstance(profile, (str, Path)) else prof.id,
        device=device, budget=budget.to_dict(), format=format,
        space=(space or SpaceConfig(format=format)).to_dict(),
        trials=trials if trials is not None else (None if minutes else 120), minutes=minutes,
        max_measurements=max_measurements if max_measurements is not None else 6, seed=seed,
        sens_samples=sensitivity_samples, runs=runs, store=str(store) if store is not None else None,
        batch_size=batch_size, threads=threads,
    )
    return spec, prof, origin


def default_study_name(spec: FitSpec, model: Any = None) -> str:
    import hashlib
    import re

    what = spec.model or type(model).__name__
    key = hashlib.sha256(repr(sorted(spec.to_dict().items())).encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"devicefit-{what}-{spec.profile}-{key}")


def start_study(model: str, data: Any = None, *, storage: str, study_name: str | None = None, **kwargs: Any) -> str:
    """Create a study that ``devicefit search-worker`` processes can join, without running a search here.

    Takes :func:`fit`'s keyword arguments (budgets, profile, device, trials…); returns the study name.
    """
    from devicefit.compressor.search.studydb import open_study
    from devicefit.compressor.search.worker import SPEC_ATTR

    spec, _prof, _origin = make_spec(model, data, **kwargs)
    name = study_name or default_study_name(spec)
    study = open_study(storage, name, seed=spec.seed)
    study.set_user_attr(SPEC_ATTR, spec.to_dict())
    return name


def fit(
    model: Any,
    data: Any = None,
    *,
    profile: Any = "localhost",
    device: str | None = None,
    max_latency_ms: float | None = None,
    max_size_mb: float | None = None,
    max_memory_mb: float | None = None,
    max_accuracy_drop: float | None = None,
    trials: int | None = None,
    minutes: float | None = None,
    format: str = "onnx",
    out: str | Path = "devicefit-out",
    storage: str | None = None,
    progress: bool = True,
    max_measurements: int | None = None,
    space: SpaceConfig | None = None,
    seed: int = 0,
    study_name: str | None = None,
    sensitivity_samples: int | None = None,
    runs: int = 30,
    store: str | Path | None = None,
    batch_size: int = 1,
    threads: int | None = None,
) -> FitResult:
    """Fit ``model`` (zoo:NAME, file, factory, nn.Module or ModelBundle) to ``profile`` / ``device``.

    Budgets default to the profile's. ``trials`` (default 120, cheap: most are only predicted) or
    ``minutes`` bound the search; ``max_measurements`` (default 6) bounds how many candidates are compressed
    and measured. ``storage``: an Optuna RDB URL (default: SQLite ``out/study.db``); other processes can
    join with ``devicefit search-worker --storage URL --study NAME`` (the name is in report.json).
    ``store``: the measurement store file (default ~/.cache/devicefit/measurements.db).
    ``batch_size``: inputs per benchmark run — every latency (baseline, candidates, budget) is the p50 of
    one inference at this batch size; the latency model's MACs and activations scale with it.
    ``threads``: intra-op threads for every benchmark (default: the runner's, = physical cores).
    """
    spec, prof, origin = make_spec(
        model, data, profile=profile, device=device, max_latency_ms=max_latency_ms, max_size_mb=max_size_mb,
        max_memory_mb=max_memory_mb, max_accuracy_drop=max_accuracy_drop, trials=trials, minutes=minutes,
        format=format, max_measurements=max_measurements, space=space, seed=seed,
        sensitivity_samples=sensitivity_samples, runs=runs, store=store, batch_size=batch_size, threads=threads,
    )
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with Phases(progress) as phases:
        ctx = prepare(spec, model_obj=model, data_obj=data, profile_obj=prof, work=out_dir / "work", phases=phases)
        outcome = _search(ctx, spec, out_dir, storage, study_name or default_study_name(spec, model), phases)
        phases.start("write", 1, "model.onnx manifest.json plan.yaml report.json report.html")
        result = _write(ctx, spec, outcome, out_dir, origin, time.monotonic() - t0)
        phases.finish("write")
    return result


def _search(ctx: Prepared, spec: FitSpec, out_dir: Path, storage: str | None, name: str, phases: Phases) -> Any:
    from devicefit.compressor.search.studydb import candidates_from_study, default_storage, open_study
    from devicefit.compressor.search.worker import SPEC_ATTR

    storage = storage or default_storage(out_dir)
    study = open_study(storage, name, seed=spec.seed)
    study.set_user_attr(SPEC_ATTR, spec.to_dict())
    ctx.loop.run(study)
    others = [c for c in candidates_from_study(study, ctx.problem) if c.trial not in ctx.loop.candidates]
    phases.start("exploit", None, "measuring the most promising predictions")
    ctx.loop.exploit(extra=others)
    phases.finish("exploit")
    outcome = ctx.loop.outcome(ctx.baseline, others=others)
    chosen = outcome.chosen
    if chosen.path is None and chosen is not ctx.baseline:  # measured by another worker: materialize it here
        phases.start("measure", None, "re-measuring the winner locally")
        chosen.measured_ms = None
        chosen.metric = None
        ctx.loop.by_hash.pop(chosen.plan_hash, None)
        ctx.loop.evaluate(chosen, tag="local", score=False)
    phases.start("distill", None, "distillation on the chosen structural plan")
    final = ctx.loop.distill_winner(chosen)
    phases.finish("distill")
    if final is not chosen:
        outcome = ctx.loop.outcome(ctx.baseline, others=others)  # now listing the distilled candidate too
        if final.passes(ctx.problem.budget):
            outcome.best = final
        else:
            outcome.closest, outcome.best = final, None
    outcome.study = {"storage": _redact(storage), "name": name}
    return outcome


def _redact(url: str) -> str:
    """A storage URL without its password."""
    import re

    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def _write(ctx: Prepared, spec: FitSpec, outcome: Any, out_dir: Path, origin: dict[str, str], seconds: float) -> FitResult:
    from devicefit.fit_report import build_report
    from devicefit.report_html import render_html

    chosen = outcome.chosen
    plan = ctx.problem.space.plan(chosen.labels) if chosen is not ctx.baseline else Plan()
    if chosen.distilled and ctx.loop.config.distill is not None:
        plan = Plan(plan.rules, distill=ctx.loop.config.distill)
    model_path = out_dir / "model.onnx"
    src = chosen.path or ctx.baseline.path
    if src is not None and Path(src).resolve() != model_path.resolve():
        shutil.copyfile(src, model_path)
    plan.save(out_dir / "plan.yaml")
    report = build_report(ctx, spec, outcome, origin=origin, seconds=seconds)
    try:
        import re

        from devicefit.artifact import Artifact

        model_id = re.sub(r"[^A-Za-z0-9._+-]+", "-", ctx.bundle.name).strip("-.") or "model"
        Artifact.from_file(model_path, model_id=f"{model_id}-fit"[:128], plan=plan, metrics=report["result"]["metric"]).save()
        report["manifest"] = "manifest.json (devicefit.artifact)"
    except ImportError:  # pragma: no cover - the artifact module ships with the SDK
        report["manifest"] = None
    import json

    ctx.save_latency()
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out_dir / "report.html").write_text(render_html(report), encoding="utf-8")
    return FitResult(out_dir, model_path, plan, report)


def run_worker(storage: str, study_name: str, *, trials: int | None = 20, minutes: float | None = None,
               max_measurements: int | None = None, progress: bool = True, work: str | Path | None = None) -> dict[str, Any]:
    """Join study ``study_name`` at ``storage`` and contribute trials (``devicefit search-worker``)."""
    import os
    import socket
    import tempfile

    from devicefit.compressor.search.studydb import open_study
    from devicefit.compressor.search.worker import join_study, read_spec

    study = open_study(storage, study_name, create=False)
    spec = FitSpec.from_dict(read_spec(study))
    if spec.model is None:
        raise UserInputError(
            f"study {study_name!r} was started from an in-memory model; workers cannot rebuild it",
            "start the fit from a model spec (zoo:NAME, a file or package.module:factory)",
        )
    spec.trials, spec.minutes = trials, minutes
    if max_measurements is not None:
        spec.max_measurements = max_measurements
    work_dir = Path(work) if work else Path(tempfile.mkdtemp(prefix="devicefit-worker-"))
    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    with Phases(progress) as phases:
        ctx = prepare(spec, work=work_dir, phases=phases)
        done = join_study(ctx.loop, study, worker_id=worker_id)
    return {"study": study_name, "worker": worker_id, "trials": done, "measurements": ctx.loop.measurements}

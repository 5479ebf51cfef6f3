"""``devicefit.fit``: search for the best compressed model that meets a device's budget, proven by measurement.

    result = devicefit.fit("zoo:minilm-l6", profile="localhost", device="grpc://127.0.0.1:50051",
                           max_latency_ms=40, max_accuracy_drop=0.02)
    result.budget_met, result.latency_ms, result.out_dir  # out/: model.onnx manifest.json plan.yaml report.*

This is the shell around the engine (:class:`~devicefit.compressor.search.session.FitSession`, whose methods
are the phases): validate the arguments (:class:`~devicefit.fitting.config.FitConfig`), load the model,
connect to the device (or spawn a local agent), build the evaluator, run the phases, write the outputs.
Budgets default to the profile's. ``budget_met`` is true only for a *measured* candidate within every budget;
otherwise the closest measured candidate is written with its shortfall (``BudgetNotMetError`` is the CLI's
exit 3; the Python API returns the result and leaves raising to ``result.raise_if_not_met()``).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devicefit import defaults
from devicefit.compressor.plan import Plan
from devicefit.compressor.search.session import FitSession
from devicefit.errors import BudgetNotMetError, UserInputError
from devicefit.fitting.config import FitConfig
from devicefit.kernels.paths import cache_root
from devicefit.progress import Progress

if TYPE_CHECKING:
    from devicefit.compressor.search.config import SearchConfig
    from devicefit.fitting.evaluator import FitEvaluator


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

    @property
    def warnings(self) -> list[str]:
        """What the user must know about this result (where it was measured, a budget out of reach)."""
        return list(self.report.get("warnings", []))

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


def default_study_name(config: FitConfig, model: Any = None) -> str:
    what = config.model or type(model).__name__
    key = hashlib.sha256(repr(sorted(config.to_dict().items())).encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"devicefit-{what}-{config.profile_name()}-{key}")


def start_study(model: str, data: Any = None, *, storage: str, study_name: str | None = None, **options: Any) -> str:
    """Create a study that ``devicefit search-worker`` processes can join, without running a search here.

    Takes :func:`fit`'s keyword arguments (budgets, profile, device, trials…); returns the study name.
    """
    from devicefit.compressor.search.studydb import open_study
    from devicefit.compressor.search.worker import SPEC_ATTR

    config = FitConfig.create(model, data, **options)
    config.load_profile()  # a profile that does not exist fails here, not in the workers
    name = study_name or default_study_name(config)
    study = open_study(storage, name, seed=config.seed)
    study.set_user_attr(SPEC_ATTR, config.to_dict())
    return name


def fit(model: Any, data: Any = None, *, out: str | Path = "devicefit-out", storage: str | None = None,
        progress: bool = True, study_name: str | None = None, **options: Any) -> FitResult:
    """Fit ``model`` (zoo:NAME, file, factory, nn.Module or ModelBundle) to ``profile`` / ``device``.

    An ``.onnx`` file (it needs ``data``) is searched on its graph: per-layer quantization schemes, keep-float and
    int4 weight-only on its MatMul / Gemm / Conv weights, the metric measured on its outputs vs the fp32 file;
    pruning, low-rank and distillation need the torch model and are not offered (``report["search"]["space"]``
    says so).

    ``options`` are :class:`FitConfig`'s fields: ``profile`` (default "localhost"), ``device`` (an agent URL;
    default: an agent spawned on this host), ``pool`` (URLs of further boards of the same kind, measured in
    parallel: :mod:`devicefit.fitting.pool`), ``max_latency_ms`` / ``max_size_mb`` / ``max_memory_mb`` /
    ``max_accuracy_drop`` (default: the profile's) or ``max_latency_ratio`` (a fraction of the fp32 model's p50
    measured on the device at the start), ``trials`` (default 120, cheap: most are only predicted)
    or ``minutes``, ``max_measurements`` (default 6: candidates compressed and measured), ``format``, ``space``,
    ``seed``, ``sensitivity_samples``, ``runs``, ``store`` (the measurement store file, default
    ~/.cache/devicefit/measurements.db), ``batch_size`` (inputs per benchmark run: every latency is per run at
    this batch; the latency model's MACs and activations scale with it), ``threads`` (intra-op threads of every
    benchmark; default: the runner's, = physical cores). ``storage``: an Optuna RDB URL (default: SQLite
    ``out/study.db``); other processes can join with ``devicefit search-worker --storage URL --study NAME``
    (the name is in report.json).
    """
    from devicefit.compressor.search.studydb import default_storage, open_study
    from devicefit.compressor.search.worker import SPEC_ATTR
    from devicefit.fitting.pool import WorkerPool
    from devicefit.fitting.report import write_outputs

    config = FitConfig.create(model, data, **options)
    profile = config.load_profile()
    warnings = config.measurement_warnings(profile)
    for w in warnings:  # said before the minutes of searching, and again in the report
        sys.stderr.write(f"devicefit: warning: {w}\n")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = study_name or default_study_name(config, model)
    storage = storage or default_storage(out_dir)
    t0 = time.monotonic()
    with Progress(progress) as phases, _session(config, profile, out_dir / "work", phases, model, data) as (session, bundle):
        study = open_study(storage, name, seed=config.seed)
        study.set_user_attr(SPEC_ATTR, config.to_dict())
        pool = WorkerPool(config.pool, storage=storage, study_name=name, work=out_dir / "work", max_measurements=config.max_measurements,
                          trials=config.effective_trials, minutes=config.minutes)
        with pool:
            pool.start()
            outcome = session.run(study, wait=pool.join if config.pool else None)
        pool_warnings = [f"pool board {r['device']}: {r['error']}" for r in pool.results if r.get("error")]
        for w in [*outcome.warnings(), *pool_warnings]:
            sys.stderr.write(f"devicefit: warning: {w}\n")
        phases.start("write", 1, f"model.{config.format} manifest.json plan.yaml report.json report.html")
        result = write_outputs(session, config, outcome, out_dir, bundle=bundle, profile=profile,
                               origin=config.budget(profile)[1], seconds=time.monotonic() - t0,
                               study={"storage": _redact(storage), "name": name, "pool": pool.results},
                               warnings=[*warnings, *pool_warnings])
        phases.finish("write")
    return FitResult(out_dir, result.model_path, result.plan, result.report)


def run_worker(storage: str, study_name: str, *, trials: int | None = defaults.WORKER_TRIALS, minutes: float | None = None,
               max_measurements: int | None = None, progress: bool = True, work: str | Path | None = None,
               device: str | None = None) -> dict[str, Any]:
    """Join study ``study_name`` at ``storage`` and contribute trials (``devicefit search-worker``).

    ``device``: an agent URL to measure on instead of the study's (several workers, one board each)."""
    from devicefit.compressor.search.studydb import make_sampler, open_study, worker_seed
    from devicefit.compressor.search.worker import read_spec

    study = open_study(storage, study_name, create=False)
    config = FitConfig.from_dict(read_spec(study))
    if config.model is None:
        raise UserInputError(
            f"study {study_name!r} was started from an in-memory model; workers cannot rebuild it",
            "start the fit from a model spec (zoo:NAME, a file or package.module:factory)",
        )
    if max_measurements is not None:
        config = config.with_(max_measurements=max_measurements)
    config = config.with_(pool=())  # a worker measures on one board; the fit that started the study owns the pool
    if device is not None:
        config = config.with_(device=device)
    for w in config.measurement_warnings(config.load_profile()):
        sys.stderr.write(f"devicefit: warning: {w}\n")
    work_dir = Path(work) if work else Path(tempfile.mkdtemp(prefix="devicefit-worker-"))
    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    study.sampler = make_sampler(worker_seed(config.seed, worker_id))  # not the fit's seed: its trials again
    with Progress(progress) as phases, _session(config, config.load_profile(), work_dir, phases, trials=trials,
                                              minutes=minutes) as (session, _bundle):
        done = session.join(study, worker_id=worker_id)
    return {"study": study_name, "worker": worker_id, "trials": done, "measurements": session.measurements,
            "device": _redact(config.device) if config.device else "a local agent"}


@contextmanager
def _session(config: FitConfig, profile: Any, work: Path, phases: Progress, model: Any = None, data: Any = None,
             **search: Any) -> Iterator[tuple[FitSession, Any]]:
    """Load the model, connect to the device (or spawn a local agent), build the evaluator and open the
    engine's session (phases analyze and sensitivity). Yields the session and the loaded model. ``search``:
    settings that replace the engine's (a worker's trials / minutes)."""
    from devicefit.bundle import ModelBundle
    from devicefit.compressor.latency import MeasurementStore
    from devicefit.fitting.evaluator import FitEvaluator, measuring_device
    from devicefit.models import load_model

    if config.format == "tflite":  # said before minutes of loading, with the extra to install
        from devicefit.compressor.export_tflite import require_tflite

        require_tflite()
    phases.start("load", 1, str(config.model or type(model).__name__))
    src = model if model is not None else config.model
    if src is None:
        raise UserInputError("fit spec names no model", "give a model spec (zoo:NAME, file.pt2, package.module:factory)")
    bundle = src if isinstance(src, ModelBundle) else load_model(src, data=data if data is not None else config.data)
    if (bundle.eval or bundle.calib) is None:
        raise UserInputError(f"{bundle.name} has no evaluation data", "pass data= / --data file.npz")
    notes: list[str] = []
    if bundle.module is None:  # an ONNX file: the search covers what can be done on the graph
        from devicefit.compressor.search.onnx_model import prepare_onnx

        assert bundle.onnx_path is not None, "load_model gives an ONNX bundle its file"
        prepared = prepare_onnx(bundle.onnx_path, work / "input.onnx", name=bundle.name,
                                data=bundle.eval or bundle.calib, input_names=bundle.input_names)
        bundle, notes = replace(bundle, onnx_path=prepared.path), prepared.notes
    _check_batch_one(bundle)
    if config.format == "tflite":
        notes.append("LiteRT reports no per-op times: each .tflite measurement taught the latency model its "
                     "end-to-end time only (no per-layer split)")
    phases.finish("load")
    budget, _origin = config.budget(profile)
    search_config = replace(config.search_config(budget), **search)
    with measuring_device(config.device) as device:
        evaluator = FitEvaluator(bundle, device, workdir=work, profile=profile, runs=config.runs, warmup=config.warmup,
                                 threads=config.threads, batch_size=config.batch_size, format=config.format)
        search_config, kernel_notes = _with_kernels(search_config, evaluator)
        notes += kernel_notes
        store = MeasurementStore(config.store) if config.store else MeasurementStore()
        session = FitSession.open(bundle, profile, evaluator, search_config, cache_dir=cache_root(), store=store,
                                  progress=phases)
        if session.facts is not None:
            session.facts.notes.extend(notes)
        yield session, bundle


def _with_kernels(search_config: SearchConfig, evaluator: FitEvaluator) -> tuple[SearchConfig, list[str]]:
    """The search space as the device allows it: devicefit's kernel techniques (``needs_kernels``) are offered only
    when the agent runs the kernel library; the note says which were left out and how to get them."""
    from devicefit.compressor.search.space import SpaceConfig
    from devicefit.compressor.techniques import family_classes

    space = replace(search_config.space or SpaceConfig(), kernels=evaluator.kernels)
    wanted = sorted(c.method for fam, methods in space.families.items() for c in family_classes(fam)
                    if c.method in methods and c.needs_kernels)
    notes = []
    if wanted and not evaluator.kernels and evaluator.format == "onnx":
        notes.append(f"{', '.join(wanted)} not offered: the agent on {evaluator.device_id} reports no devicefit kernel "
                     "library (GetInfo custom_kernels); build it there with `python -m devicefit.kernels build` "
                     "(needs a C compiler) and restart the agent")
    return replace(search_config, space=space), notes


def _check_batch_one(bundle: Any) -> None:
    """A fit runs the model at batch 1 (analysis) and at the benchmark batch: a ``.pt2`` exported at a fixed
    batch refuses both (its guard), which is said here with the fix instead of deep in the analysis."""
    import torch

    if not str(bundle.source or "").startswith("pt2:"):
        return
    one = tuple(t[:1] if isinstance(t, torch.Tensor) and t.dim() > 0 else t for t in bundle.example_inputs)
    try:
        with torch.inference_mode():
            bundle.module(*one)
    except AssertionError as exc:
        raise UserInputError(
            f"{bundle.name} was exported for a fixed batch and refuses batch 1 ({str(exc).splitlines()[0][:120]})",
            "export it with a dynamic batch: torch.export.export(model, args, "
            "dynamic_shapes=({0: torch.export.Dim('batch')},)), then torch.export.save",
        ) from exc


def _redact(url: str) -> str:
    """A storage URL without its password."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)

"""Everything a fit (or a search worker) builds before the search loop runs.

:class:`FitSpec` is the serializable definition of a fit (stored on the Optuna study so a
``search-worker`` can rebuild it); :func:`prepare` turns it into a :class:`Prepared` context: the bundle,
its per-layer analysis and channel dependencies, the search space, the sensitivity table, the calibrated
latency model, the evaluator (device or host), and the measured fp32 baseline.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from devicefit.compressor.search.candidate import Budget, Candidate
from devicefit.errors import UserInputError
from devicefit.fit_phases import Phases
from devicefit.kernels.paths import cache_root


@dataclass
class FitSpec:
    """A fit's definition; JSON-serializable."""

    model: str | None
    profile: str
    budget: dict[str, float | None]
    data: str | None = None
    device: str | None = None
    format: str = "onnx"
    space: dict[str, Any] = field(default_factory=dict)
    trials: int | None = 120
    minutes: float | None = None
    max_measurements: int = 6
    seed: int = 0
    runs: int = 30
    warmup: int = 5
    threads: int | None = None
    #: inputs per benchmark run (the device measures every candidate at this batch size)
    batch_size: int = 1
    sens_samples: int | None = None
    sens_seconds: float = 45.0
    distill_steps: int | None = 150
    #: wall-clock cap on distillation (whichever of steps / seconds is reached first ends it)
    distill_seconds: float | None = 90.0
    store: str | None = None
    #: measure each quant scheme on half the layers first (calibration probes, see compressor.search.probes)
    probe: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FitSpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def model_hash(bundle: Any) -> str:
    """sha256 over the bundle name and every tensor of the state dict (or the ONNX file's bytes)."""
    h = hashlib.sha256(bundle.name.encode())
    if bundle.module is not None:
        import torch

        for name, t in sorted(bundle.module.state_dict().items()):
            arr = t.detach().cpu().contiguous()
            h.update(f"{name}:{arr.dtype}:{tuple(arr.shape)};".encode())
            h.update(arr.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif bundle.onnx_path is not None:
        h.update(Path(bundle.onnx_path).read_bytes())
    return h.hexdigest()


@dataclass
class Prepared:
    spec: FitSpec
    bundle: Any
    profile: Any
    analysis: Any
    specs: list[Any]
    deps: Any
    problem: Any
    evaluator: Any
    loop: Any
    store: Any
    baseline: Candidate
    model_hash: str
    latency_path: Path
    sensitivity_data: str = ""

    def budget_key(self) -> str:
        return hashlib.sha256(repr(sorted(self.problem.budget.to_dict().items())).encode()).hexdigest()[:8]

    def save_latency(self) -> None:
        self.problem.latency.save(self.latency_path)


def _sens_budget(spec: FitSpec, bundle: Any, data: Any, n_evals: int) -> tuple[int, int | None]:
    """(samples, max full evaluations) for sensitivity within ``sens_seconds``.

    Timed on this machine: the most samples (a power of 2, 8 to 256) that let all ``n_evals`` full
    evaluations fit the budget; when even 8 do not, 8 samples and as many full evaluations as fit (the rest
    estimated from local errors)."""
    if spec.sens_samples:
        return min(len(data), int(spec.sens_samples)), None
    import time

    import torch

    from devicefit.compressor.export import torch_outputs

    def cost(n: int) -> float:
        probe = data.take(min(n, len(data)))
        with torch.no_grad():
            torch_outputs(bundle.module, probe, bundle.input_names, batch_size=len(probe))
            t0 = time.perf_counter()
            torch_outputs(bundle.module, probe, bundle.input_names, batch_size=len(probe))
        return time.perf_counter() - t0

    t8 = cost(8)
    n = 8
    while n * 2 <= min(256, len(data)) and n_evals * t8 * (n * 2) / 8 <= spec.sens_seconds:
        n *= 2
    if n_evals * t8 * n / 8 <= spec.sens_seconds:
        return min(len(data), n), None
    return min(len(data), 8), max(1, int(spec.sens_seconds / max(t8, 1e-6)))


def prepare(spec: FitSpec, *, work: Path, phases: Phases, model_obj: Any = None, data_obj: Any = None,
            profile_obj: Any = None) -> Prepared:
    from devicefit.bundle import ModelBundle
    from devicefit.compressor.analysis import analyze
    from devicefit.compressor.latency import (
        CalibratedModel,
        LayerSpec,
        MeasurementStore,
        Roofline,
        node_map_for,
    )
    from devicefit.compressor.search.deps import find_deps
    from devicefit.compressor.search.problem import SearchProblem
    from devicefit.compressor.search.sensitivity import JointDrop, measure_sensitivity
    from devicefit.compressor.search.space import SpaceConfig, build_space
    from devicefit.compressor.search.study import LoopConfig, SearchLoop
    from devicefit.compressor.techniques import Distill
    from devicefit.device_profiles import load_profile
    from devicefit.fit_backend import FitEvaluator
    from devicefit.metrics import score
    from devicefit.models import load_model
    from devicefit.runtime import run_onnx

    phases.start("load", 1, str(spec.model or type(model_obj).__name__))
    profile = profile_obj or load_profile(spec.profile)
    src = model_obj if model_obj is not None else spec.model
    if src is None:
        raise UserInputError("fit spec names no model", "give a model spec (zoo:NAME, file.pt2, package.module:factory)")
    bundle = src if isinstance(src, ModelBundle) else load_model(src, data=data_obj if data_obj is not None else spec.data)
    if bundle.module is None:
        raise UserInputError(
            f"fit needs the torch model, but {bundle.name} was given as ONNX",
            "pass the PyTorch model (zoo:NAME, file.pt2, package.module:factory or an nn.Module); "
            "for an ONNX file use `devicefit compress` with an explicit plan",
        )
    data = bundle.eval or bundle.calib
    if data is None:
        raise UserInputError(f"{bundle.name} has no evaluation data", "pass data= / --data file.npz")
    phases.finish("load")

    phases.start("analyze", 3, "per-layer table")
    analysis = analyze(bundle.module, bundle.example_inputs)
    mods = dict(bundle.module.named_modules())
    # analysis is per sample; the device runs ``batch_size`` samples per inference
    from devicefit.compressor.layers import is_compressible

    specs = [LayerSpec.from_info(li).batched(spec.batch_size) for li in analysis.layers
             if li.macs > 0 and li.name in mods and is_compressible(mods[li.name])]
    if not specs:
        raise UserInputError(f"{bundle.name} has no Linear / Conv layers to compress", "fit works on Linear and Conv layers")
    phases.update("analyze", 1, description="model hash")
    mhash = model_hash(bundle)
    phases.update("analyze", 2, description="channel dependencies")
    deps = find_deps(bundle.module, bundle.example_inputs, [s.name for s in specs])
    phases.finish("analyze", f"{len(specs)} layers, {len(deps.prunable)} prunable alone")

    space = build_space(specs, config=SpaceConfig.from_dict(spec.space) if spec.space else SpaceConfig(format=spec.format),
                        has_calibration=bundle.calib is not None, prunable=deps.prunable)
    n_evals = sum(len(space.atomic(layer)) - 1 for layer in space.layers)
    n_samples, max_full = _sens_budget(spec, bundle, data, n_evals)
    sens_data = data.take(n_samples)
    phases.start("sensitivity", n_evals, f"{n_evals} layer×technique on {len(sens_data)} samples"
                 + (f" (≤ {max_full} full evaluations)" if max_full else ""))
    sens = measure_sensitivity(bundle.module, space, sens_data, input_names=bundle.input_names, metric=bundle.metric,
                               model_hash=mhash, cache_dir=cache_root() / "sensitivity", max_full=max_full,
                               progress=lambda i, n: phases.update("sensitivity", i, n))
    phases.finish("sensitivity", f"{len(sens_data)} samples, {sens.cached} cached, {sens.estimated} estimated, "
                  f"{sens.seconds:.0f} s")

    phases.start("baseline", 3, "fp32 export")
    device = None
    if spec.device:
        from devicefit.device import connect

        device = connect(spec.device)
    evaluator = FitEvaluator(bundle, workdir=work, profile=profile, device=device, runs=spec.runs, warmup=spec.warmup,
                             threads=spec.threads, batch_size=spec.batch_size)
    latency_path = cache_root() / "latency" / f"{evaluator.device_id}.json"
    # efficiencies differ with the batch size and the thread count: learned per (model, benchmark settings)
    scope = "-".join(([f"batch{spec.batch_size}"] if spec.batch_size != 1 else [])
                     + ([f"threads{spec.threads}"] if spec.threads else []))
    latency = CalibratedModel.load(latency_path, Roofline.from_profile(profile), device_id=evaluator.device_id,
                                   model_key=f"{mhash}@{scope}" if scope else mhash, scope=scope)
    budget = Budget.from_dict(spec.budget)
    joint = JointDrop(bundle.module, space, sens_data, input_names=bundle.input_names, metric=bundle.metric)
    problem = SearchProblem(specs, total_params=int(analysis.params), space=space, sensitivity=sens, latency=latency,
                            budget=budget, consumers=deps.consumers, model_hash=mhash, joint=joint)
    fp32 = evaluator.fp32()
    phases.update("baseline", 1, description="fp32 measure")
    timing = evaluator.measure(fp32.path)
    if timing.batch_size != spec.batch_size:
        raise UserInputError(f"the benchmark ran at batch {timing.batch_size}, not the batch_size={spec.batch_size} asked",
                             "update the agent (its BenchmarkRequest must honour batch_size)")
    ref = run_onnx(fp32.path, data, input_names=bundle.input_names)
    base_metric = score(bundle.metric, ref, ref, data.labels, data=data.description or "eval").to_dict()
    fp32.metric = base_metric
    # the persisted calibration was learned on other days: rescale it to the device's speed now
    latency.anchor_session(problem.latency_costs(problem.costs(problem.float_labels())), timing.p50_ms)
    baseline = problem.predict(problem.float_labels(), trial=-1)
    node_map = node_map_for(fp32.path, space.layers)
    split = problem.learn(baseline, timing, None, node_map, score=False)
    baseline.measured_ms, baseline.p90_ms, baseline.measured_memory_mb = timing.p50_ms, timing.p90_ms, timing.peak_rss_mb
    baseline.size_bytes, baseline.params, baseline.macs = fp32.size_bytes, int(analysis.params), int(analysis.macs)
    baseline.metric, baseline.path, baseline.device = base_metric, fp32.path, timing.device
    baseline.tags.append("fp32")
    phases.finish("baseline", f"fp32 p50 {timing.p50_ms:.2f} ms on {timing.device}")

    store = MeasurementStore(spec.store) if spec.store else MeasurementStore()
    cfg = LoopConfig(trials=spec.trials, minutes=spec.minutes, max_measurements=spec.max_measurements, seed=spec.seed,
                     distill=Distill(steps=spec.distill_steps, seconds=spec.distill_seconds) if spec.distill_steps else None)
    loop = SearchLoop(problem, evaluator, config=cfg, store=store, profile_id=getattr(profile, "id", ""),
                      progress=phases.search_callback)
    loop.add_measured(baseline)
    evaluator.mark_reference(timing.p50_ms)
    from devicefit.compressor.plan import Plan

    loop.record(baseline, Plan(), timing, split, role="baseline")
    if spec.probe:
        from devicefit.compressor.search.probes import run_probes

        phases.start("probe", None, "each quant scheme on every other layer, measured (calibration)")
        probes = run_probes(loop, note=lambda msg: phases.update("probe", len(loop.probes), None, msg))
        ok = [p for p in probes if p.measured]
        phases.finish("probe", ", ".join(f"{p.tags[-1]} {p.measured_ms:.2f} ms (prior said {p.predicted_ms:.2f})"
                                         for p in ok) or "nothing to calibrate")
    return Prepared(spec, bundle, profile, analysis, specs, deps, problem, evaluator, loop, store, baseline, mhash,
                    latency_path, sensitivity_data=f"{len(sens_data)} samples of {data.description or 'eval'}")

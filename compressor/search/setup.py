"""What the engine builds from a loaded model before it measures anything: the per-layer table, channel
dependencies, the search space, the sensitivity table and the latency model (phases *analyze* and
*sensitivity* of :class:`~devicefit.compressor.search.session.FitSession`)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devicefit.compressor.latency import CalibratedModel, LayerSpec, Roofline
from devicefit.compressor.search.config import SearchConfig
from devicefit.compressor.search.problem import SearchProblem
from devicefit.compressor.search.progress import PhaseProgress
from devicefit.errors import UserInputError


@dataclass
class ModelFacts:
    """The model as the search sees it."""

    analysis: Any
    specs: list[LayerSpec]
    deps: Any
    model_hash: str
    #: "N samples of <data>" the sensitivity table was measured on
    sensitivity_data: str = ""
    #: the technique families the search may use (an ONNX-only model: quantization only)
    families: tuple[str, ...] | None = None
    #: what the report must say about the model as the search saw it (an ONNX input's restrictions)
    notes: list[str] = field(default_factory=list)

    @property
    def graph_only(self) -> bool:
        """The model is an ONNX graph without its torch module (only graph-level techniques apply)."""
        return self.families is not None


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


def analyze_model(bundle: Any, config: SearchConfig, progress: PhaseProgress) -> ModelFacts:
    """Per-layer table (per inference at ``config.batch_size``), model hash, channel dependencies."""
    from devicefit.compressor.analysis import analyze
    from devicefit.compressor.layers import is_compressible
    from devicefit.compressor.search.deps import find_deps

    if bundle.module is None:
        return _analyze_graph(bundle, config, progress)
    progress.start("analyze", 3, "per-layer table")
    analysis = analyze(bundle.module, bundle.example_inputs)
    mods = dict(bundle.module.named_modules())
    # analysis is per sample; the device runs ``batch_size`` samples per inference
    specs = [LayerSpec.from_info(li).batched(config.batch_size) for li in analysis.layers
             if li.macs > 0 and li.name in mods and is_compressible(mods[li.name])]
    if not specs:
        raise UserInputError(f"{bundle.name} has no Linear / Conv layers to compress", "fit works on Linear and Conv layers")
    progress.update("analyze", 1, description="model hash")
    mhash = model_hash(bundle)
    progress.update("analyze", 2, description="channel dependencies")
    deps = find_deps(bundle.module, bundle.example_inputs, [s.name for s in specs])
    progress.finish("analyze", f"{len(specs)} layers, {len(deps.prunable)} prunable alone")
    return ModelFacts(analysis, specs, deps, mhash)


def _analyze_graph(bundle: Any, config: SearchConfig, progress: PhaseProgress) -> ModelFacts:
    """:func:`analyze_model` of an ONNX-only bundle (:mod:`.onnx_model`): the graph's layers, no channel
    dependencies (nothing is pruned), the quant family only."""
    from devicefit.compressor.search.deps import Deps
    from devicefit.compressor.search.onnx_model import GRAPH_FAMILIES, GRAPH_ONLY_NOTE, onnx_facts

    if bundle.onnx_path is None:  # pragma: no cover - load_model sets a module or a file
        raise UserInputError(f"{bundle.name} has neither a torch module nor an ONNX file", "load it with devicefit.load_model")
    progress.start("analyze", 2, "per-layer table (ONNX graph)")
    shapes = {n: tuple(getattr(a, "shape", ())) for n, a in zip(bundle.input_names, bundle.example_inputs, strict=False)}
    analysis, specs = onnx_facts(bundle.onnx_path, None, example_shapes=shapes, batch_size=config.batch_size)
    if not specs:
        raise UserInputError(f"{bundle.name} has no MatMul / Gemm / Conv layer with a constant weight to quantize",
                             "fit searches per-layer quantization of those layers; fit the PyTorch model instead")
    progress.update("analyze", 1, description="model hash")
    mhash = model_hash(bundle)
    progress.finish("analyze", f"{len(specs)} layers (ONNX graph: quantization only)")
    return ModelFacts(analysis, specs, Deps(frozenset()), mhash, families=GRAPH_FAMILIES, notes=[GRAPH_ONLY_NOTE])


def sens_budget(config: SearchConfig, data: Any, n_evals: int, run: Callable[[Any], Any]) -> tuple[int, int | None]:
    """(samples, max full evaluations) for sensitivity within ``config.sens_seconds``; ``run(dataset)`` is
    one full evaluation.

    Timed on this machine: the most samples (a power of 2, 8 to 256) that let all ``n_evals`` full
    evaluations fit the budget; when even 8 do not, 8 samples and as many full evaluations as fit (the rest
    estimated from local errors)."""
    if config.sens_samples:
        return min(len(data), int(config.sens_samples)), None

    def cost(n: int) -> float:
        probe = data.take(min(n, len(data)))
        run(probe)
        t0 = time.perf_counter()
        run(probe)
        return time.perf_counter() - t0

    t8 = cost(8)
    n = 8
    while n * 2 <= min(256, len(data)) and n_evals * t8 * (n * 2) / 8 <= config.sens_seconds:
        n *= 2
    if n_evals * t8 * n / 8 <= config.sens_seconds:
        return min(len(data), n), None
    return min(len(data), 8), max(1, int(config.sens_seconds / max(t8, 1e-6)))


def build_problem(bundle: Any, profile: Any, facts: ModelFacts, config: SearchConfig, *, device_id: str,
                  cache_dir: Path, progress: PhaseProgress) -> tuple[SearchProblem, Path]:
    """The search space, the sensitivity table (cached under ``cache_dir/sensitivity``) and the latency model
    persisted for ``device_id`` (``cache_dir/latency/<device_id>.json``, returned)."""
    from devicefit.compressor.search.sensitivity import JointDrop, measure_sensitivity
    from devicefit.compressor.search.space import SpaceConfig, build_space

    data = bundle.eval or bundle.calib
    space_config = config.space or SpaceConfig()
    if facts.families is not None:
        space_config = space_config.only(facts.families)
    space = build_space(facts.specs, config=space_config,
                        has_calibration=bundle.calib is not None, prunable=facts.deps.prunable)
    n_evals = sum(len(space.atomic(layer)) - 1 for layer in space.layers)
    joint: Any
    if facts.graph_only:
        from devicefit.compressor.search.onnx_sensitivity import (
            FakeGraph,
            OnnxJointDrop,
            measure_onnx_sensitivity,
        )

        graph = FakeGraph(bundle.onnx_path, space.layers, input_names=bundle.input_names)
        n_samples, max_full = sens_budget(config, data, n_evals, graph.run)
    else:
        import torch

        from devicefit.compressor.export import torch_outputs

        def run(probe: Any) -> Any:
            with torch.no_grad():
                return torch_outputs(bundle.module, probe, bundle.input_names, batch_size=len(probe))

        n_samples, max_full = sens_budget(config, data, n_evals, run)
    sens_data = data.take(n_samples)
    progress.start("sensitivity", n_evals, f"{n_evals} layer×technique on {len(sens_data)} samples"
                   + (f" (≤ {max_full} full evaluations)" if max_full else ""))
    if facts.graph_only:
        sens = measure_onnx_sensitivity(graph, space, sens_data, metric=bundle.metric, model_hash=facts.model_hash,
                                        cache_dir=cache_dir / "sensitivity", max_full=max_full,
                                        progress=lambda i, n: progress.update("sensitivity", i, n))
        joint = OnnxJointDrop(graph, space, sens_data, metric=bundle.metric)
    else:
        sens = measure_sensitivity(bundle.module, space, sens_data, input_names=bundle.input_names, metric=bundle.metric,
                                   model_hash=facts.model_hash, cache_dir=cache_dir / "sensitivity", max_full=max_full,
                                   progress=lambda i, n: progress.update("sensitivity", i, n))
        joint = JointDrop(bundle.module, space, sens_data, input_names=bundle.input_names, metric=bundle.metric)
    progress.finish("sensitivity", f"{len(sens_data)} samples, {sens.cached} cached, {sens.estimated} estimated, "
                    f"{sens.seconds:.0f} s")
    facts.sensitivity_data = f"{len(sens_data)} samples of {data.description or 'eval'}"
    latency_path = cache_dir / "latency" / f"{device_id}.json"
    # efficiencies differ with the batch size and the thread count: learned per (model, benchmark settings)
    scope = config.scope()
    latency = CalibratedModel.load(latency_path, Roofline.from_profile(profile), device_id=device_id,
                                   model_key=f"{facts.model_hash}@{scope}" if scope else facts.model_hash, scope=scope)
    problem = SearchProblem(facts.specs, total_params=int(facts.analysis.params), space=space, sensitivity=sens,
                            latency=latency, budget=config.budget, consumers=facts.deps.consumers,
                            model_hash=facts.model_hash, joint=joint)
    return problem, latency_path

"""Per-layer sensitivity: the metric drop when only one layer gets one technique.

Evaluated cheaply in torch on a small slice of the evaluation data, with the *fake* form each technique
declares (:meth:`~devicefit.compressor.techniques.Technique.fake`, kernels in :mod:`devicefit.compressor.fake`)
applied to one layer at a time (weights swapped in place and restored; activations fake-quantized by a
forward pre-hook: per batch for int8 dynamic, with the range fixed from the slice itself for int8 static /
SmoothQuant). A recurrent layer (GRU / LSTM) gets the weight transform on each of its gate matrices
(``weight_ih_l*`` / ``weight_hh_l*``, one int8 scale per gate row like the export) and the activation
quantizer on its input sequence (not on the hidden state of each step). These are approximations meant for **ranking**, not the final numbers (the search measures
its candidates for real through the compress pipeline).

Results are cached on disk per model hash + data hash + option label. Under a time budget
(``max_full``), one full evaluation per layer and option group anchors estimates of the others from
their local output errors (counted in ``SensitivityTable.estimated``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from devicefit.compressor.fake import fake_act_quant
from devicefit.compressor.layers import is_recurrent, weight_names
from devicefit.compressor.search.space import Option, SearchSpace
from devicefit.data import Dataset
from devicefit.metrics import cosine, score


@contextmanager
def applied(module: nn.Module, layer: str, option: Option, act_stats: dict[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily apply ``option``'s fake techniques to ``layer`` of ``module``."""
    mod = dict(module.named_modules())[layer]
    # a GRU / LSTM: every weight_ih_l* / weight_hh_l*, each transformed alone (one scale per gate row, as exported)
    weights: list[torch.Tensor] = [getattr(mod, n) for n in weight_names(mod)]
    bias = getattr(mod, "bias", None) if not is_recurrent(mod) else None
    saved_ws = [w.data.clone() for w in weights]
    saved_b = bias.data.clone() if isinstance(bias, torch.Tensor) else None
    hooks = []
    try:
        for tech in (option.prune, option.lowrank, option.quant):
            if tech is None:
                continue
            op = tech.fake()
            if op is None:
                continue
            if op.weight is not None:
                for weight in weights:
                    new = op.weight(weight.data, tech, act_stats.get(layer))
                    if op.zero_bias_rows and saved_b is not None and bias is not None:
                        dead = new.reshape(new.shape[0], -1).abs().sum(1) == 0
                        bias.data[dead] = 0.0
                    weight.data.copy_(new)
            if op.activation is not None:
                rng = act_stats.get(layer + "#range")
                static = op.activation == "static" and rng is not None

                def pre(_m: nn.Module, args: tuple[Any, ...], static: bool = static, rng: Any = rng) -> Any:
                    x = args[0]
                    lo, hi = (float(rng[0]), float(rng[1])) if static else (float(x.min()), float(x.max()))
                    return (fake_act_quant(x, lo, hi), *args[1:])

                hooks.append(mod.register_forward_pre_hook(pre))
        yield
    finally:
        for h in hooks:
            h.remove()
        for weight, saved_w in zip(weights, saved_ws, strict=True):
            weight.data.copy_(saved_w)
        if saved_b is not None and bias is not None:
            bias.data.copy_(saved_b)


# ------------------------------------------------------------------------------------------ table
@dataclass
class SensitivityTable:
    """layer -> single-technique option label -> metric drop (and 1 − output cosine)."""

    metric: str
    baseline: float
    samples: int
    drops: dict[str, dict[str, float]] = field(default_factory=dict)
    devs: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0
    cached: int = 0
    #: entries estimated from local output errors (see ``measure_sensitivity(max_full=...)``)
    estimated: int = 0

    def drop(self, layer: str, option: Option) -> float:
        """Predicted drop of ``option`` on ``layer``: the sum of its parts' measured drops (≥ 0 each)."""
        d = self.drops.get(layer, {})
        return float(sum(max(0.0, d.get(p, 0.0)) for p in option.parts()))

    def plan_drop(self, space: SearchSpace, labels: dict[str, str]) -> float:
        """Prediction of the metric drop of a whole plan from the per-layer drops: their sum while it is
        small; combined as independent losses, 1 − Π(1 − dᵢ) (each dᵢ clipped to [0, 1]), so the
        prediction stays ≤ 1 — a sum of 60 coarse per-layer drops (one flipped sample of 8 is 0.125)
        otherwise predicts drops above 1, i.e. "nothing is feasible"."""
        keep = 1.0
        for layer, lab in labels.items():
            keep *= 1.0 - min(1.0, self.drop(layer, space.option(layer, lab)))
        return float(1.0 - keep)

    def order(self, label: str) -> list[str]:
        """Layers sorted from most to least sensitive to ``label`` (by drop, then output deviation)."""
        layers = [layer for layer in self.drops if label in self.drops[layer]]
        return sorted(layers, key=lambda x: (self.drops[x][label], self.devs.get(x, {}).get(label, 0.0)), reverse=True)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "baseline": self.baseline, "samples": self.samples, "seconds": self.seconds,
                "cached": self.cached, "estimated": self.estimated, "drops": self.drops, "devs": self.devs}


class JointDrop:
    """The metric drop of a *whole plan*, every layer's fake technique applied at once, on the sensitivity
    slice — what the per-layer table cannot give once its drops no longer add (many layers each costing a
    little). One forward pass of the slice per plan (cached by the caller); activation statistics are
    collected once, lazily."""

    def __init__(self, module: nn.Module, space: SearchSpace, data: Dataset, *, input_names: Sequence[str], metric: str,
                 batch_size: int = 64) -> None:
        self.module, self.space, self.data = module, space, data
        self.input_names, self.metric, self.batch_size = list(input_names), metric, batch_size
        self._ref: np.ndarray | None = None
        self._stats: dict[str, torch.Tensor] | None = None
        self.calls = 0
        self.seconds = 0.0

    def _run(self) -> np.ndarray:
        from devicefit.compressor.export import torch_outputs

        with torch.no_grad():
            return torch_outputs(self.module, self.data, self.input_names, batch_size=self.batch_size)

    def __call__(self, labels: dict[str, str]) -> float:
        from contextlib import ExitStack

        t0 = time.perf_counter()
        self.module.eval()
        if self._ref is None or self._stats is None:
            self._ref = self._run()
            self._stats = _act_stats(self.module, self.space.layers, self._run)
        with ExitStack() as stack:
            for layer, lab in labels.items():
                opt = self.space.option(layer, lab)
                if opt.parts():
                    stack.enter_context(applied(self.module, layer, opt, self._stats))
            out = self._run()
        res = score(self.metric, self._ref, out, self.data.labels)
        self.calls += 1
        self.seconds += time.perf_counter() - t0
        return float(res.drop) if np.isfinite(res.drop) else 1.0


def _cache_file(cache_dir: Path, model_hash: str, data_hash: str) -> Path:
    return cache_dir / f"{model_hash[:20]}-{data_hash[:20]}.json"


def _act_stats(module: nn.Module, layers: Sequence[str], run: Callable[[], np.ndarray]) -> dict[str, torch.Tensor]:
    """Per layer: mean |input| per input feature (for ASVD) and the input's (min, max) (static range)."""
    named = dict(module.named_modules())
    stats: dict[str, torch.Tensor] = {}
    hooks = []
    for name in layers:
        mod = named[name]

        def pre(m: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            x = args[0].detach()
            flat = x.movedim(1, -1) if x.dim() > 2 and isinstance(m, nn.modules.conv._ConvNd) else x
            if isinstance(m, nn.modules.conv._ConvNd):
                k = int(np.prod(m.kernel_size))
                feat = flat.reshape(-1, flat.shape[-1]).abs().mean(0).repeat_interleave(k)
            else:
                feat = flat.reshape(-1, flat.shape[-1]).abs().mean(0)
            stats[name] = feat
            rng = torch.tensor([float(x.min()), float(x.max())])
            old = stats.get(name + "#range")
            stats[name + "#range"] = rng if old is None else torch.tensor([min(old[0], rng[0]), max(old[1], rng[1])])

        hooks.append(mod.register_forward_pre_hook(pre))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return stats


def _main_output(out: Any) -> torch.Tensor:
    """A layer's output tensor (a GRU / LSTM returns ``(output, hidden)``)."""
    return out[0] if isinstance(out, tuple) else out


def _local_errors(module: nn.Module, items: Sequence[tuple[str, Option]], data: Dataset, input_names: Sequence[str],
                  stats: dict[str, torch.Tensor]) -> dict[tuple[str, str], float]:
    """||Δy||² / ||y||² of each layer's own output under each option, on the layer's real inputs."""
    from devicefit.compressor.export import torch_outputs

    named = dict(module.named_modules())
    wanted = {layer for layer, _ in items}
    inputs: dict[str, torch.Tensor] = {}
    hooks = [named[n].register_forward_pre_hook(lambda _m, a, n=n: inputs.setdefault(n, a[0].detach())) for n in wanted]
    try:
        with torch.no_grad():
            torch_outputs(module, data, input_names, batch_size=len(data))
    finally:
        for h in hooks:
            h.remove()
    out: dict[tuple[str, str], float] = {}
    with torch.no_grad():
        for layer, opt in items:
            x = inputs[layer]
            y0 = _main_output(named[layer](x))
            with applied(module, layer, opt, stats):
                y = _main_output(named[layer](x))
            out[(layer, opt.label)] = float(((y - y0) ** 2).sum() / (y0**2).sum().clamp_min(1e-30))
    return out


def hybrid_refs(full: Sequence[tuple[str, Option]], local: dict[tuple[str, str], float]
                ) -> tuple[dict[tuple[str, bool], str], list[tuple[str, Option]]]:
    """Under a budget of full evaluations: per layer and option group (quant-only; with a structural part), the
    option with the largest local output error (the one evaluated in full), and the evaluations left."""
    refs: dict[tuple[str, bool], str] = {}
    for lay, o in full:
        key = (lay, o.structural)
        if key not in refs or local[(lay, o.label)] > local[(lay, refs[key])]:
            refs[key] = o.label
    return refs, [(lay, o) for lay, o in full if refs[(lay, o.structural)] == o.label]


def estimate_from_refs(cache: dict[str, Any], refs: dict[tuple[str, bool], str], local: dict[tuple[str, str], float],
                       space: SearchSpace) -> None:
    """Fill ``cache`` with the options :func:`hybrid_refs` left out: their group reference's full drop scaled by
    their local error over the reference's (marked ``est``)."""
    for (layer, structural), ref_label in refs.items():
        r = cache[f"{layer}|{ref_label}"]
        e_ref = local[(layer, ref_label)]
        for (lay, lab), e in local.items():
            if lay == layer and lab != ref_label and space.option(lay, lab).structural == structural:
                f = e / e_ref if e_ref > 0 else 1.0
                cache[f"{lay}|{lab}"] = {"drop": r["drop"] * f, "dev": r["dev"] * f, "est": True}


def measure_sensitivity(
    module: nn.Module,
    space: SearchSpace,
    data: Dataset,
    *,
    input_names: Sequence[str],
    metric: str,
    model_hash: str,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    max_full: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SensitivityTable:
    """Drop of the bundle metric on ``data`` for every single-technique option of every layer.

    ``max_full``: at most this many full-model evaluations. When more are needed, each layer gets one full
    evaluation per group (quant-only options; options with a structural part) — its option with the
    largest *local* output error — and the group's other options are estimated from it in proportion to
    their local errors (1 − cosine of the output is quadratic in a small perturbation, like the local
    error). ``SensitivityTable.estimated`` counts them.
    """
    from devicefit.compressor.export import torch_outputs

    module.eval()

    def run() -> np.ndarray:
        with torch.no_grad():
            return torch_outputs(module, data, input_names, batch_size=batch_size)

    stats: dict[str, torch.Tensor] = {}

    def evaluate(layer: str, opt: Option) -> np.ndarray:
        with applied(module, layer, opt, stats):
            return run()

    return sweep_options(
        space, data, ref=run(), metric=metric, model_hash=model_hash, cache_dir=cache_dir, max_full=max_full,
        progress=progress, prepare=lambda: stats.update(_act_stats(module, space.layers, run)),
        local_errors=lambda items, d: _local_errors(module, items, d, input_names, stats), evaluate=evaluate,
    )


def sweep_options(
    space: SearchSpace,
    data: Dataset,
    *,
    ref: np.ndarray,
    metric: str,
    model_hash: str,
    cache_dir: str | Path | None,
    max_full: int | None,
    progress: Callable[[int, int], None] | None,
    prepare: Callable[[], None],
    local_errors: Callable[[Sequence[tuple[str, Option]], Dataset], dict[tuple[str, str], float]],
    evaluate: Callable[[str, Option], np.ndarray],
) -> SensitivityTable:
    """The sweep both back ends share (torch here, onnxruntime in :mod:`.onnx_sensitivity`): the cache, the
    hybrid full / estimated split, one full evaluation per option, the table. ``ref``: the unmodified model's
    outputs on ``data``; ``prepare()``: called once before the first evaluation (activation statistics);
    ``local_errors(items, data)``: each option's local output error (hybrid mode); ``evaluate(layer, option)``:
    the model's outputs with that one option applied."""
    labels = data.labels
    table = SensitivityTable(metric=metric, baseline=float(score(metric, ref, ref, labels).baseline), samples=len(data))
    cache: dict[str, Any] = {}
    path = _cache_file(Path(cache_dir), model_hash, data.fingerprint()) if cache_dir else None
    if path is not None and path.is_file():
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = {}
    todo = [(layer, opt) for layer in space.layers for opt in space.atomic(layer) if opt.parts()]
    hybrid = max_full is not None and sum(1 for lay, o in todo if f"{lay}|{o.label}" not in cache) > max_full
    full = [(lay, o) for lay, o in todo
            if f"{lay}|{o.label}" not in cache or (not hybrid and cache[f"{lay}|{o.label}"].get("est"))]
    t0 = time.perf_counter()
    if full:
        prepare()
    local: dict[tuple[str, str], float] = {}
    refs: dict[tuple[str, bool], str] = {}
    if hybrid:
        local = local_errors(full, data.take(min(len(data), 4)))
        refs, full = hybrid_refs(full, local)
    for i, (layer, opt) in enumerate(full):
        out = evaluate(layer, opt)
        res = score(metric, ref, out, labels)
        hit = {"drop": float(res.drop), "dev": float(1.0 - cosine(ref, out))}
        cache[f"{layer}|{opt.label}"] = hit if np.isfinite(hit["drop"]) else {"drop": 1.0, "dev": 1.0}
        if progress is not None:
            progress(i + 1, len(full))
    estimate_from_refs(cache, refs, local, space)
    for layer, opt in todo:
        hit = cache[f"{layer}|{opt.label}"]
        table.drops.setdefault(layer, {})[opt.label] = float(hit["drop"])
        table.devs.setdefault(layer, {})[opt.label] = float(hit["dev"])
        table.estimated += int(bool(hit.get("est")))
    fresh = {f"{lay}|{o.label}" for lay, o in full} | {f"{lay}|{lab}" for lay, lab in local}
    table.cached = sum(1 for lay, o in todo if f"{lay}|{o.label}" not in fresh)
    table.seconds = time.perf_counter() - t0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # one per process: workers share the cache
        tmp.write_text(json.dumps(cache))
        tmp.replace(path)
    return table

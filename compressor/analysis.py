"""Per-layer facts of a model: parameters, MACs and input/output shapes, plus totals.

``analyze(module, example_inputs)`` runs one forward pass at batch 1 (the first sample of each example
input) with forward hooks on the leaf layers and ``torch.utils.flop_counter.FlopCounterMode`` around it.
MACs = counted FLOPs / 2, so attention matmuls (outside any leaf layer) count in the total; a layer's MACs
are the FLOPs of the ops that ran inside it, except a recurrent layer's (GRU / LSTM), which are counted from its
weights and sequence length (:func:`~devicefit.compressor.layers.recurrent_macs`: the fused LSTM kernel is
invisible to the flop counter). ``params`` counts every unique parameter once (tied weights
once). ``analyze_onnx(path)`` gives the same table for an ONNX-only model (Conv / Gemm / MatMul MACs
from ONNX shape inference).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from devicefit.compressor.layers import is_recurrent, recurrent_macs


@dataclass(frozen=True)
class LayerInfo:
    """One layer: torch qualified name (the plan's layer name), class name, own params, MACs per sample."""

    name: str
    type: str
    params: int
    macs: int
    input_shape: list[int] | None
    output_shape: list[int] | None


@dataclass(frozen=True)
class ModelAnalysis:
    """Per-layer table and totals (``macs`` per sample, i.e. at batch 1)."""

    layers: list[LayerInfo]
    params: int
    macs: int
    extra: dict[str, Any] = field(default_factory=dict)

    def layer(self, name: str) -> LayerInfo:
        for info in self.layers:
            if info.name == name:
                return info
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"params": self.params, "macs": self.macs, "layers": [asdict(li) for li in self.layers]}


def _shape(obj: Any) -> list[int] | None:
    if isinstance(obj, torch.Tensor):
        return [int(d) for d in obj.shape]
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, list | tuple):
        for item in obj:
            s = _shape(item)
            if s is not None:
                return s
    return None


def _first_sample(example_inputs: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(t[:1] if isinstance(t, torch.Tensor) and t.dim() > 0 else t for t in example_inputs)


def count_params(module: torch.nn.Module) -> int:
    """Unique parameters (a tied weight counts once)."""
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def _analyze_graph(module: torch.fx.GraphModule, args: tuple[Any, ...]) -> ModelAnalysis:
    """Layer table of an unlifted ``torch.export`` module (``.pt2``): its graph calls no submodule, so
    FLOPs, shapes and types are attributed per node through ``nn_module_stack`` metadata."""
    layers: dict[str, dict[str, Any]] = {}
    counter = FlopCounterMode(display=False)

    class _Walk(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            before = counter.get_total_flops()
            out = super().run_node(n)
            stack = n.meta.get("nn_module_stack") or {}
            if n.op == "call_function" and stack:
                fqn, typ = list(stack.values())[-1]
                typ = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
                if fqn:
                    rec = layers.setdefault(fqn, {"type": typ.rsplit(".", 1)[-1], "flops": 0, "in": None, "out": None})
                    rec["flops"] += counter.get_total_flops() - before
                    if rec["in"] is None:
                        rec["in"] = _shape([self.env.get(a) for a in n.all_input_nodes if a.op != "get_attr"])
                    rec["out"] = _shape(out)
            return out

    with torch.inference_mode(), counter:
        _Walk(module).run(*args)
    infos = []
    for fqn, rec in layers.items():
        try:
            params = sum(p.numel() for p in module.get_submodule(fqn).parameters(recurse=False))
        except AttributeError:
            params = 0
        infos.append(LayerInfo(fqn, rec["type"], int(params), int(rec["flops"] // 2), rec["in"], rec["out"]))
    return ModelAnalysis(infos, count_params(module), int(counter.get_total_flops() // 2))


#: submodules ``torch.export`` adds to an unlifted module (its input-shape guard), which are no layers
_EXPORT_HELPERS = frozenset({"_guards_fn"})


def analyze(module: torch.nn.Module, example_inputs: Sequence[Any]) -> ModelAnalysis:
    """Per-layer table of ``module`` on one sample of ``example_inputs`` (see the module docstring)."""
    if isinstance(module, torch.fx.GraphModule) and any(
        n.meta.get("nn_module_stack") for n in module.graph.nodes if n.op == "call_function"
    ):
        return _analyze_graph(module, _first_sample(example_inputs))
    layers = [
        (name, m)
        for name, m in module.named_modules()
        if name and name not in _EXPORT_HELPERS
        and (not any(True for _ in m.children()) or any(True for _ in m.parameters(recurse=False)))
    ]
    shapes: dict[str, tuple[list[int] | None, list[int] | None]] = {}

    def hook(name: str) -> Any:
        def _record(_m: torch.nn.Module, args: tuple[Any, ...], out: Any) -> None:
            if name not in shapes:
                shapes[name] = (_shape(args), _shape(out))

        return _record

    handles = [m.register_forward_hook(hook(name)) for name, m in layers]
    was_training = module.training
    module.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.inference_mode(), counter:
            module(*_first_sample(example_inputs))
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    counts = counter.get_flop_counts()
    root = type(module).__name__
    infos = []
    uncounted = 0  # MACs of recurrent layers the flop counter does not see (the fused LSTM kernel)
    for name, m in layers:
        if name not in shapes and not any(True for _ in m.parameters(recurse=False)):
            continue  # never ran and holds nothing (e.g. an unused activation)
        flops = sum(counts.get(f"{root}.{name}", {}).values())
        ins, outs = shapes.get(name, (None, None))
        params = sum(p.numel() for p in m.parameters(recurse=False))
        macs = int(flops // 2)
        if is_recurrent(m):
            rnn = recurrent_macs(m, ins)
            uncounted += max(0, rnn - macs)
            macs = rnn
        infos.append(LayerInfo(name, type(m).__name__, int(params), macs, ins, outs))
    return ModelAnalysis(infos, count_params(module), int(counter.get_total_flops() // 2) + uncounted)


def state_size_bytes(module: torch.nn.Module) -> int:
    """Bytes of the module's unique parameters and buffers (the fp32 model's weight size)."""
    seen: set[int] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


# --- ONNX-only models ------------------------------------------------------------------------------


def _dims(vi: Any) -> list[int] | None:
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
    return None if any(d <= 0 for d in dims) else dims


def analyze_onnx(path: str | Path, input_shapes: Mapping[str, Sequence[int]] | None = None) -> ModelAnalysis:
    """Layer table of an ONNX model at batch 1 (symbolic dims: ``input_shapes`` if given, else 1).

    A layer is a Conv / Gemm / MatMul node with a weight initializer; it is named after the initializer
    (``fc1.weight`` -> ``fc1``) when that follows torch naming, else after the node.
    """
    import onnx

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        given = list(input_shapes[vi.name]) if input_shapes and vi.name in input_shapes else None
        for i, d in enumerate(vi.type.tensor_type.shape.dim):
            if not d.HasField("dim_value"):
                d.dim_value = 1 if given is None or i == 0 else int(given[i])
    with contextlib.suppress(Exception):  # analysis is best effort for exotic graphs
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {vi.name: _dims(vi) for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]}
    for name, init in inits.items():
        shapes[name] = [int(d) for d in init.dims]
    params = int(sum(int(np.prod(i.dims)) for i in model.graph.initializer if len(i.dims) > 0))
    infos: list[LayerInfo] = []
    total = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        a = shapes.get(node.input[0])
        w = shapes.get(node.input[1]) if len(node.input) > 1 else None
        out = shapes.get(node.output[0])
        macs = 0
        if out is not None and w is not None:
            if node.op_type == "Conv":
                macs = int(np.prod(out)) * int(np.prod(w[1:]))
            elif node.op_type == "Gemm":
                trans_b = next((at.i for at in node.attribute if at.name == "transB"), 0)
                macs = int(np.prod(out)) * int(w[1] if trans_b else w[0])
            else:
                macs = int(np.prod(out)) * int(w[-2]) if len(w) >= 2 else 0
        total += macs
        weight = next((v for v in node.input[1:2] if v in inits), None)
        if weight is None:
            continue
        name = weight.removesuffix(".weight") if weight.endswith(".weight") else (node.name or weight)
        wparams = sum(int(np.prod(inits[v].dims)) for v in node.input[1:] if v in inits)
        infos.append(LayerInfo(name, node.op_type, wparams, macs, a, out))
    return ModelAnalysis(infos, params, total, extra={"source": "onnx"})


__all__ = ["LayerInfo", "ModelAnalysis", "analyze", "analyze_onnx", "count_params", "state_size_bytes"]

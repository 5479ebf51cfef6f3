"""An ONNX-only model as the search sees it (``devicefit fit model.onnx``): no torch module, so only what can
be done on the graph — per-layer quantization schemes, keep-float, int4 weight-only.

* **Layers** are what the quantizers act on: :func:`devicefit.compressor.quant.mapping.map_layers` with no
  torch names (every ``MatMul`` / ``Gemm`` / ``Conv`` with a constant weight) — the ONNX image of
  :data:`devicefit.compressor.layers.COMPRESSIBLE`, and the one definition ``compress`` uses on an ONNX file.
* :func:`prepare_onnx` writes the fit's working copy of the user's file: each layer's weight initializer
  renamed to ``<layer>.weight`` (``.weight.T`` for a ``[K, N]`` MatMul weight) by
  :func:`~devicefit.compressor.quant.mapping.canonicalize`, so every later pass (quantizers, the optimized
  graph's node map, sensitivity) finds the same layer under the same name; a fixed batch axis is relaxed to a
  symbolic one when the graph runs at another batch, and refused with the fix when it does not.
* :func:`onnx_facts` gives the per-layer table (MACs and activation sizes from ONNX shape inference,
  :func:`devicefit.compressor.analysis.analyze_onnx`) the latency model reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from devicefit.compressor.latency import LayerSpec
from devicefit.data import Dataset
from devicefit.errors import UserInputError

#: the families a fit can search on an ONNX-only model (the others need the torch module)
GRAPH_FAMILIES = ("quant",)
#: what the report and the CLI say about it
GRAPH_ONLY_NOTE = ("ONNX input: the search covers per-layer quantization only (int8 static / dynamic, int4 "
                   "weight-only, keep-float); pruning, low-rank and distillation need the torch model and are not "
                   "offered (fit the PyTorch model — zoo:NAME, file.pt2, package.module:factory — to search them)")


@dataclass
class PreparedOnnx:
    """The fit's working copy of an ONNX model: its path, its layers (plan names) and what was changed."""

    path: Path
    layers: list[str]
    notes: list[str] = field(default_factory=list)


def _fixed_batch(model: Any) -> dict[str, int]:
    """Graph inputs whose axis 0 is a fixed size: name -> that size."""
    inits = {i.name for i in model.graph.initializer}
    out: dict[str, int] = {}
    for vi in model.graph.input:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims) > 0 and dims[0].HasField("dim_value"):
            out[vi.name] = int(dims[0].dim_value)
    return out


def _relax_batch(model: Any, names: Sequence[str]) -> None:
    """Make axis 0 of ``names`` (and of every graph output with a fixed axis 0) symbolic ``batch``; drop the
    intermediate shapes recorded for the fixed batch."""
    wanted = set(names)
    for vi in [*(i for i in model.graph.input if i.name in wanted), *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) > 0 and dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
    del model.graph.value_info[:]


def _batch_problem(path: Path, data: Dataset, input_names: Sequence[str]) -> str | None:
    """Why ``path`` cannot run ``data`` two samples at a time (the same outputs as one at a time), or None."""
    from devicefit.kernels.ort_session import cpu_session, feeds

    two = data.take(2)
    if len(two) < 2:
        return None
    try:
        sess = cpu_session(path)
        both = np.asarray(sess.run(None, feeds(sess, next(two.batches(2)), input_names))[0])
        ones = [np.asarray(sess.run(None, feeds(sess, b, input_names))[0]) for b in two.batches(1)]
    except Exception as exc:  # onnxruntime's errors are plain RuntimeErrors / Fail
        return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    one = np.concatenate(ones, axis=0)
    if both.shape != one.shape:
        return f"two samples at once give an output of shape {list(both.shape)}, one at a time {list(one.shape)}"
    if not np.allclose(both.astype(np.float64), one.astype(np.float64), rtol=1e-3, atol=1e-4):
        return "two samples at once give other outputs than one at a time (the batch axis mixes samples)"
    return None


def prepare_onnx(src: str | Path, dst: str | Path, *, name: str, data: Dataset | None,
                 input_names: Sequence[str]) -> PreparedOnnx:
    """Write the fit's working copy of ``src`` to ``dst`` (see the module docstring) and check that it runs
    ``data`` at more than one sample per batch (the fit evaluates data in batches and benchmarks at
    ``--batch-size``). Raises :class:`UserInputError` for a graph with no layer to quantize, or one that
    cannot run another batch than the one it was exported for."""
    from devicefit.compressor.quant import graph as G
    from devicefit.compressor.quant.mapping import canonicalize, map_layers

    model = G.load(src)
    lmap = map_layers(model, None)
    if not lmap.nodes:
        ops = sorted({n.op_type for n in model.graph.node})
        raise UserInputError(
            f"{name} has no layer to quantize: no MatMul / Gemm / Conv node reads a constant weight "
            f"(its ops: {', '.join(ops[:12]) or 'none'}{' …' if len(ops) > 12 else ''})",
            "fit searches per-layer quantization of MatMul / Gemm / Conv weights; export the model with its weights "
            "as initializers (torch.onnx.export does), or fit the PyTorch model instead",
        )
    lmap = canonicalize(model, lmap)
    notes: list[str] = []
    fixed = _fixed_batch(model)
    if fixed:
        _relax_batch(model, list(fixed))
        notes.append("fixed batch axis made symbolic on input(s) " + ", ".join(f"{k} (was {v})" for k, v in fixed.items()))
    out = G.save(model, dst)
    why = _batch_problem(out, data, input_names) if data is not None else None
    if why is not None:
        was = (f"it was exported for a fixed batch ({', '.join(f'{k}: {v}' for k, v in fixed.items())}) and "
               if fixed else "")
        raise UserInputError(
            f"{name}: {was}does not run at another batch size: {why}",
            "the fit evaluates data several samples at a time and benchmarks at --batch-size: export the model with a "
            "dynamic batch axis (torch.onnx.export(..., dynamic_axes={'INPUT': {0: 'batch'}}), or with dynamo=True "
            "and dynamic_shapes) and no batch size written into Reshape shapes",
        )
    return PreparedOnnx(out, list(lmap.nodes), notes)


def onnx_facts(path: str | Path, layers: Sequence[str] | None, *, example_shapes: Mapping[str, Sequence[int]],
               batch_size: int = 1) -> tuple[Any, list[LayerSpec]]:
    """(analysis, one :class:`LayerSpec` per layer at ``batch_size``) of a prepared model (:func:`prepare_onnx`);
    ``layers``: the plan names to describe (``None``: every layer of the graph).

    Shapes come from ONNX shape inference with the symbolic dims of each input set from ``example_shapes``
    (the data's: a sequence length, an image size) and batch 1. A layer computed by several nodes (a weight
    used twice) sums their MACs."""
    from devicefit.compressor.analysis import LayerInfo, ModelAnalysis, analyze_onnx
    from devicefit.compressor.quant import graph as G
    from devicefit.compressor.quant.mapping import map_layers

    model = G.load(path)
    G.ensure_node_names(model)
    lmap = map_layers(model, list(layers) if layers is not None else None)
    layers = list(lmap.nodes) if layers is None else layers
    shapes = {k: [1, *list(v)[1:]] for k, v in example_shapes.items()}
    analysis = analyze_onnx(path, shapes)
    # analyze_onnx names a node after its weight when it ends in ".weight", else after the node
    by_key = {li.name: li for li in analysis.layers}
    infos: list[LayerInfo] = []
    for layer in layers:
        parts = [by_key.get(layer if ln.weight == f"{layer}.weight" else ln.node) for ln in lmap.nodes.get(layer, [])]
        found = [p for p in parts if p is not None]
        if not found:
            continue
        first = found[0]
        kind = "Conv" if lmap.nodes[layer][0].op_type == "Conv" else "Linear"
        infos.append(LayerInfo(layer, kind, first.params, sum(p.macs for p in found), first.input_shape, first.output_shape))
    table = ModelAnalysis(infos, analysis.params, analysis.macs, extra={"source": "onnx"})
    specs = [LayerSpec.from_info(li).batched(batch_size) for li in infos if li.macs > 0]
    return table, specs


__all__ = ["GRAPH_FAMILIES", "GRAPH_ONLY_NOTE", "PreparedOnnx", "onnx_facts", "prepare_onnx"]

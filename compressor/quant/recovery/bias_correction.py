"""Empirical bias correction of a QDQ graph (Nagel et al. 2019, "Data-Free Quantization", §4.2).

Quantizing weights and activations shifts the mean of each layer's output: E[W̃x̃] ≠ E[Wx]. For every
Conv / Gemm whose bias is an int32 ``DequantizeLinear`` (how onnxruntime's QDQ quantizer writes it), and every
MatMul whose float output feeds one ``Add`` of a constant bias (Linear layers: the QDQ pass leaves MatMul
outputs in float so onnxruntime fuses ``MatMulIntegerToFloat``), the per-output-channel mean of the fp32 and of the quantized pre-activation output are measured on calibration
feeds and the difference is added to the bias, re-quantized with the bias's own scale. Only bias values
change: the node set, the scales and hence onnxruntime's int8 fusions and speed stay exactly as they were.
The shift is the layer's *own* (its weights' rounding and its output's clipping, given the quantized
input it really receives): a float twin of the layer reads the same dequantized input, so one pass corrects
every layer without upstream corrections being counted twice (correcting against the fp32 network's own
outputs in one pass does, and measured on EfficientNet-Lite0 it wrecks the model).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from devicefit.compressor.quant import graph as G
from devicefit.compressor.quant.recovery.layer_error import matched_outputs, tapped


@dataclass(frozen=True)
class _Bias:
    node: str
    initializer: str  #: int32 bias of a Conv / Gemm, or the float constant added after a MatMul
    scale: str | None  #: the int32 bias's scale initializer (``None``: a float bias)
    channel_axis: int  #: of the layer's output


def _biases(model: onnx.ModelProto) -> dict[str, _Bias]:
    """Correctable biases: int32 ``DequantizeLinear`` biases of Conv / Gemm, and the float constant of the
    ``Add`` that alone consumes a MatMul's float output (how the QDQ pass leaves Linear layers)."""
    inits = G.initializers(model)
    prod = G.producers(model)
    cons = G.consumers(model)
    out: dict[str, _Bias] = {}
    for n in model.graph.node:
        if n.op_type == "MatMul":
            users = cons.get(n.output[0], [])
            if len(users) != 1 or users[0].op_type != "Add":
                continue
            const = [t for t in users[0].input if t in inits and t != n.output[0]]
            if len(const) == 1 and len(G.to_array(inits[const[0]]).shape) == 1:
                out[n.name] = _Bias(n.name, const[0], None, -1)
            continue
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 3 or n.input[2] not in prod:
            continue
        dq = prod[n.input[2]]
        if dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or dq.input[1] not in inits:
            continue
        if inits[dq.input[0]].data_type != onnx.TensorProto.INT32:
            continue
        out[n.name] = _Bias(n.name, dq.input[0], dq.input[1], 1)
    return out


def _channel_means(x: np.ndarray, axis: int) -> tuple[np.ndarray, int]:
    """Per-channel sum and count of the other axes."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, 0)
    flat = x.reshape(x.shape[0], -1)
    return flat.sum(axis=1), flat.shape[1]


def _shadowed(fp32: onnx.ModelProto, quant: onnx.ModelProto, nodes: list[str]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """``quant`` plus, per layer, a float twin reading the same (dequantized) input with the fp32 weight and
    bias; returns the model and node → twin output."""
    aug = onnx.ModelProto()
    aug.CopyFrom(quant)
    fp_nodes = {n.name: n for n in fp32.graph.node}
    fp_inits = G.initializers(fp32)
    have = set(G.initializers(aug))
    twins: dict[str, str] = {}
    qnodes = {n.name: n for n in aug.graph.node}
    for name in nodes:
        q, f = qnodes[name], fp_nodes[name]
        params = [t for t in f.input[1:] if t]
        if not all(t in fp_inits for t in params):
            continue
        renamed = []
        for t in params:  # the QDQ graph reuses fp32 parameter names for its DequantizeLinear outputs
            copy = onnx.TensorProto()
            copy.CopyFrom(fp_inits[t])
            copy.name = f"{t}__float_twin"
            if copy.name not in have:
                aug.graph.initializer.append(copy)
                have.add(copy.name)
            renamed.append(copy.name)
        out = f"{name}__float_twin"
        twin = onnx.helper.make_node(q.op_type, [q.input[0], *renamed], [out], name=out)
        twin.attribute.extend(q.attribute)
        aug.graph.node.append(twin)
        twins[name] = out
    return aug, twins


def _corrected(inits: dict[str, onnx.TensorProto], bias: _Bias, delta: np.ndarray) -> np.ndarray:
    current = G.to_array(inits[bias.initializer])
    if bias.scale is None:
        return (current.astype(np.float64) + delta).astype(current.dtype)
    scale = G.to_array(inits[bias.scale]).astype(np.float64)
    safe = np.where(scale > 0, scale, 1.0)
    new = np.where(scale > 0, np.round(current.astype(np.float64) + delta / safe), current)
    return np.clip(new, np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)


def correct_biases(
    fp32: onnx.ModelProto,
    quant: onnx.ModelProto,
    feeds: Sequence[dict[str, np.ndarray]],
    *,
    nodes: Collection[str] | None = None,
) -> dict[str, float]:
    """Fold each layer's own quantization bias into its int32 bias, in place on ``quant``.

    ``nodes``: the Conv / Gemm node names to correct (``None``: every one with an int32 bias).

    The layer's own error is measured against a float twin of the layer fed the *same* quantized input, so
    corrections do not compound along the network (one pass over ``feeds`` corrects every layer). Returns
    node → RMS of the correction (output units).
    """
    biases = _biases(quant)
    names = [n for n in matched_outputs(fp32, quant) if n in biases and (nodes is None or n in nodes)]
    if not names or not feeds:
        return {}
    aug, twins = _shadowed(fp32, quant, names)
    qnodes = {n.name: n for n in quant.graph.node}
    taps = [t for n in twins for t in (qnodes[n].output[0], twins[n])]
    run = tapped(aug, taps)
    diff: dict[str, np.ndarray] = {}
    counts: dict[str, int] = dict.fromkeys(twins, 0)
    for feed in feeds:
        values = run(feed)
        for node, twin in twins.items():
            axis = biases[node].channel_axis
            s_ref, c = _channel_means(values[twin], axis)
            s_q, _ = _channel_means(values[qnodes[node].output[0]], axis)
            diff[node] = diff.get(node, 0) + (s_ref - s_q)
            counts[node] += c
    inits = G.initializers(quant)
    applied: dict[str, float] = {}
    for node in twins:
        bias = biases[node]
        delta = diff[node] / max(counts[node], 1)
        G.set_initializer(quant, bias.initializer, _corrected(inits, bias, delta))
        applied[node] = float(np.sqrt(np.mean(delta**2)))
    return applied

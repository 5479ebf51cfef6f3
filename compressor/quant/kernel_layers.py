"""Per-layer graph rewrites of the techniques that run devicefit's own kernels (``needs_kernels``).

Each replaces one Linear :class:`~devicefit.compressor.quant.mapping.LayerNode` — a ``MatMul`` reading a
``[K, N]`` initializer (its bias ``Add`` fused) or a ``Gemm`` with ``transB=1`` (bias = input C) — by one
``ai.devicefit`` node (:mod:`devicefit.kernels.ops`) when ``ctx.kernels`` is True, else by that same node's
standard-op lowering (:func:`devicefit.kernels.lowering.lower_node`):

* :func:`sparse24_layer`: 2:4 magnitude pruning along K (weights already 2:4, e.g. after a ``nm`` 2:4 prune
  stage, keep their pattern) + symmetric per-output-channel int8 → ``Sparse24MatMul``, with calibration data
  the bias corrected for what pruning and rounding take away on average (``(W - W_kept) · E[x]``, as the
  torch-side mask stage does for pruning); lowered: the same
  per-row int8 activation quantization + ``MatMulInteger`` on the dense int8 weight, bit-identical.
* :func:`lowbit_layer`: 2/3-bit group-wise asymmetric codes by RTN or GPTQ (from the layer input's Hessian)
  → ``LowBitMatMul``; lowered: 4-bit ``MatMulNBits`` holding the same codes, scales and zero points with
  float activations (``accuracy_level=0``): it differs from the op by the op's int8 activation rounding.

Initializers are named ``{layer}.weight_s24…`` / ``{layer}.weight_lowbit{bits}…``, so the weight lineage of
:mod:`.verify` (:func:`~devicefit.compressor.quant.mapping.layer_of_initializer`) finds the layer in the
optimized graph, custom op or lowering alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from devicefit.compressor.quant import graph as G
from devicefit.compressor.quant import nbits
from devicefit.compressor.quant.gptq import gptq
from devicefit.compressor.quant.mapping import LayerNode
from devicefit.compressor.quant.weight_only import QuantContext
from devicefit.kernels import ops
from devicefit.kernels.lowering import MS_DOMAIN, LowBitMode, lower_node
from devicefit.kernels.pack import LowBitWeights, pack_lowbit, pack_sparse24, unpack_sparse24

#: the exact lowering of ``Sparse24MatMul`` needs ReduceMax with ``axes`` as an input
LOWERING_MIN_OPSET = 18
MATMULNBITS_NOTE = (
    "lowbit_weight_only without devicefit's kernels: the 2/3-bit codes run in onnxruntime's 4-bit MatMulNBits "
    "container (same codes, scales and zero points) with float activations"
)


def _check_layer(model: onnx.ModelProto, ln: LayerNode) -> None:
    if not ln.is_linear:
        raise ValueError(f"{ln.layer}: {ln.op_type} is not a Linear layer (MatMul / Gemm)")
    if ln.op_type == "Gemm":
        nb = G.node_by_name(model)[ln.node]
        if G.attr(nb, "alpha", 1.0) != 1.0 or G.attr(nb, "beta", 1.0) != 1.0 or G.attr(nb, "transA", 0):
            raise ValueError(f"{ln.layer}: Gemm with alpha/beta/transA is not supported by devicefit's kernels")


def _prefix(model: onnx.ModelProto, ln: LayerNode, tag: str) -> str:
    """``{layer}.weight_{tag}``, made unique when the layer has several nodes."""
    taken = {i.name for i in model.graph.initializer} | {n.name for n in model.graph.node}
    base = f"{ln.layer}.weight_{tag}"
    name, i = base, 1
    while name in taken or any(t.startswith(name + ".") for t in taken):
        name, i = f"{base}_{i}", i + 1
    return name


def _write(ctx: QuantContext, ln: LayerNode, node: Any, inits: list[Any], *, lowbit: LowBitMode) -> None:
    """Put ``node`` (or its lowering when ``ctx.kernels`` is False) in place of the layer's node + bias Add."""
    model = ctx.model
    old = G.node_by_name(model)[ln.node]
    if ctx.kernels:
        new_nodes, new_inits = [node], inits
        G.ensure_opset(model, ops.DOMAIN, ops.DOMAIN_VERSION)
    else:
        arrays = {i.name: onnx.numpy_helper.to_array(i) for i in inits}
        new_nodes, new_inits = lower_node(node, arrays.get, lowbit=lowbit)
        bias = node.input[4] if len(node.input) > 4 and node.input[4] else None
        new_inits = [*new_inits, *(i for i in inits if i.name == bias)]
        if any(n.domain == MS_DOMAIN for n in new_nodes):
            G.ensure_opset(model, MS_DOMAIN, 1)
        needs_18 = any(n.domain in ("", "ai.onnx") and n.op_type == "ReduceMax" for n in new_nodes)
        if needs_18 and G.opset(model) < LOWERING_MIN_OPSET:
            raise ValueError(
                f"{ln.layer}: the standard-op form of {node.op_type} needs opset >= {LOWERING_MIN_OPSET}, the "
                f"model has {G.opset(model)} (export it with a newer opset, or quantize with kernels=True)"
            )
    model.graph.initializer.extend(new_inits)
    G.replace_node(model, old, new_nodes)
    if ln.bias_add is not None:
        model.graph.node.remove(G.node_by_name(model)[ln.bias_add])
    G.remove_dead_nodes(model)


def sparse24_layer(ctx: QuantContext, ln: LayerNode) -> str:
    """2:4 sparse int8 weights for one Linear node (see the module docstring); returns the node prefix."""
    _check_layer(ctx.model, ln)
    w_nk = np.ascontiguousarray(ln.weight_kn(ctx.model).T)
    packed = pack_sparse24(w_nk, prune=True)  # magnitude 2:4; a weight already 2:4 keeps its non-zeros
    prefix = _prefix(ctx.model, ln, "s24")
    bias = ln.bias_array(ctx.model)
    stats = ctx.inputs.get(ln.input)
    if stats is not None and stats.n:  # keep the output's mean: fold (W - W_kept_int8) · E[x] into the bias
        kept = unpack_sparse24(packed).astype(np.float32) * packed.scales[:, None]
        shift = (w_nk - kept[:, : w_nk.shape[1]]) @ stats.mean
        bias = shift if bias is None else bias + shift
    node, inits = ops.sparse24_node(ln.input, ln.output, packed, prefix=prefix, bias=bias)
    _write(ctx, ln, node, inits, lowbit="exact")
    return prefix


def lowbit_weights(w_kn: np.ndarray, *, bits: int, group_size: int, hessian: np.ndarray | None = None) -> LowBitWeights:
    """``LowBitMatMul`` tensors of ``W[K, N]``: GPTQ when a ``hessian`` ``[K, K]`` is given, else RTN.

    Both produce :class:`~devicefit.compressor.quant.nbits.BlockQuant` codes ``q[N, K_pad]``, scales and
    integer zero points per (row, group) with ``w = (q - z) * s`` — the convention of
    :func:`devicefit.kernels.pack_lowbit`, so they are packed unchanged (padding columns dropped)."""
    if hessian is not None:
        bq = gptq(w_kn, hessian, bits=bits, group_size=group_size)
    else:
        bq = nbits.rtn(w_kn, bits=bits, block_size=group_size)
    k = w_kn.shape[0]
    return pack_lowbit(bq.q[:, :k], bq.scales, bq.zero_points, bits=bits, group_size=group_size)


def lowbit_layer(ctx: QuantContext, layer: str, ln: LayerNode, *, bits: int, group_size: int, algorithm: str) -> str:
    """2/3-bit group-wise weights for one Linear node by ``algorithm`` (``rtn`` / ``gptq``); returns the node
    prefix."""
    _check_layer(ctx.model, ln)
    if algorithm not in ("rtn", "gptq"):
        raise ValueError(f"{layer}: algorithm must be 'rtn' or 'gptq', got {algorithm!r}")
    w_kn = ln.weight_kn(ctx.model)
    hessian = ctx.hessians[ln.input].hessian() if algorithm == "gptq" else None
    packed = lowbit_weights(w_kn, bits=bits, group_size=group_size, hessian=hessian)
    prefix = _prefix(ctx.model, ln, f"lowbit{bits}")
    node, inits = ops.lowbit_node(ln.input, ln.output, packed, prefix=prefix, bias=ln.bias_array(ctx.model))
    _write(ctx, ln, node, inits, lowbit="matmulnbits")
    if not ctx.kernels and MATMULNBITS_NOTE not in ctx.notes:
        ctx.notes.append(MATMULNBITS_NOTE)
    return prefix


__all__ = ["LOWERING_MIN_OPSET", "MATMULNBITS_NOTE", "lowbit_layer", "lowbit_weights", "sparse24_layer"]

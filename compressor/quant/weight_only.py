"""Per-layer graph rewrites of the weight-only techniques (called through ``Technique.quantize_layer``).

``Int8WeightOnly`` on a Linear = 8-bit ``MatMulNBits`` (blocks of 128 along K; with ``accuracy_level=4`` it
runs int8 dot products on CPU); on a Conv, a GRU / LSTM (its W and R) or a Linear with K < 16 = int8 weight +
``Cast`` / ``Mul`` folded at load → float compute (storage only: 4x smaller, as fast as fp32). ``Int4WeightOnly`` = 4-bit ``MatMulNBits`` by RTN, GPTQ (from
the layer input's Hessian) or AWQ (from its input statistics, with an input pre-scale).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from devicefit.compressor.quant import nbits, weights
from devicefit.compressor.quant.awq import InputStats, awq
from devicefit.compressor.quant.gptq import HessianAccumulator, gptq
from devicefit.compressor.quant.mapping import LayerNode


@dataclass
class QuantContext:
    """What a per-layer rewrite reads and writes: the graph, calibration statistics keyed by input tensor,
    MatMulNBits' ``accuracy_level``, notes for the result, and ``kernels``: the techniques running devicefit's
    own kernels (``needs_kernels``) emit their ``ai.devicefit`` ops when True, the standard-op lowering of the
    same node when False (:mod:`.kernel_layers`)."""

    model: onnx.ModelProto
    hessians: dict[str, HessianAccumulator] = field(default_factory=dict)
    inputs: dict[str, InputStats] = field(default_factory=dict)
    accuracy_level: int = 4
    notes: list[str] = field(default_factory=list)
    kernels: bool = False


def int8_weight_only(ctx: QuantContext, ln: LayerNode, *, per_channel: bool) -> None:
    """8-bit weights of one node (see the module docstring)."""
    if ln.is_linear and ln.weight_kn(ctx.model).shape[0] >= 16:
        w = ln.weight_kn(ctx.model)
        # MatMulNBits has no per-tensor / per-channel mode: blocks of 128 along K (finer than per channel);
        # ``per_channel`` applies to the Conv (DequantizeLinear) path
        bq = nbits.rtn(w, bits=8, block_size=nbits.block_size_for(w.shape[0], 128))
        nbits.write_matmulnbits(ctx.model, ln, bq, accuracy_level=ctx.accuracy_level)
    else:
        weights.int8_storage(ctx.model, ln, per_channel=per_channel)


def int4_weight_only(ctx: QuantContext, layer: str, ln: LayerNode, *, group_size: int, algorithm: str) -> None:
    """4-bit grouped weights of one node by ``algorithm`` (``rtn`` / ``gptq`` / ``awq``)."""
    w = ln.weight_kn(ctx.model)
    gs = nbits.block_size_for(w.shape[0], group_size)
    pre = None
    if algorithm == "gptq":
        bq = gptq(w, ctx.hessians[ln.input].hessian(), bits=4, group_size=gs)
    elif algorithm == "awq":
        res = awq(w, ctx.inputs[ln.input], bits=4, group_size=gs)
        bq, pre = res.quant, (res.input_scale if res.alpha > 0 else None)
        ctx.notes.append(f"{layer}: awq alpha={res.alpha:.2f} err {res.error:.3g} (rtn {res.rtn_error:.3g})")
    else:
        bq = nbits.rtn(w, bits=4, block_size=gs)
    nbits.write_matmulnbits(ctx.model, ln, bq, accuracy_level=ctx.accuracy_level, pre_scale=pre)


__all__ = ["QuantContext", "int4_weight_only", "int8_weight_only"]

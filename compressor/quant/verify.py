"""What really runs: load the quantized model the way it will run (onnxruntime, all graph optimizations),
dump the optimized graph and classify every layer's compute.

A layer's compute node in the optimized graph is found by *weight lineage*: walking back from each
node's inputs through ``DequantizeLinear`` / ``Transpose`` / ``Reshape`` / ``Cast`` … to an initializer
whose name derives from the layer's canonical weight name (see :func:`mapping.canonicalize`). Then:

* ``int`` — an integer kernel reads the weight (``MatMulIntegerToFloat``, ``QLinearConv``,
  ``MatMulNBits`` …, and devicefit's own ``ai.devicefit`` ops ``Sparse24MatMul`` / ``LowBitMatMul``, whose
  standard-op lowerings are ``MatMulInteger`` / ``MatMulNBits`` and count as int too);
* ``float`` — only float kernels read it (``MatMul`` / ``Gemm`` / ``Conv`` / ``FusedConv`` … after a
  ``DequantizeLinear`` that was not fused): a **float fallback** when the plan made the layer integer;
* ``missing`` — no compute node reads the weight any more (e.g. folded into a new constant): reported
  as a fallback too, since we cannot show it runs in integer.

QDQ graphs only run as int8 where onnxruntime fuses them, which is why the check reads the optimized
graph and never the file that was written. The optimized graph is the *host's* (NCHWc layouts, host
kernels); the report names it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from devicefit.compressor.quant import graph as G
from devicefit.compressor.quant.mapping import layer_of_initializer
from devicefit.kernels import ort_session

#: kernels doing integer matmul / conv work (weight-only MatMulNBits included)
INT_OPS = frozenset(
    {
        "QLinearMatMul", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearConv",
        "ConvInteger", "QGemm", "MatMulNBits", "QAttention", "DynamicQuantizeLSTM", "QOrderedMatMul",
        "MatMulBnb4", "QLinearAdd", "QLinearMul", "QLinearAveragePool", "QLinearGlobalAveragePool",
        "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearReduceMean",
        "GatherBlockQuantized", "Sparse24MatMul", "LowBitMatMul",
    }
)
#: integer kernels that are the compute of a layer (not elementwise helpers)
INT_COMPUTE = frozenset(
    {
        "QLinearMatMul", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearConv",
        "ConvInteger", "QGemm", "MatMulNBits", "QAttention", "QOrderedMatMul", "MatMulBnb4", "DynamicQuantizeLSTM",
        "Sparse24MatMul", "LowBitMatMul",
    }
)
FLOAT_COMPUTE = frozenset(
    {"MatMul", "Gemm", "Conv", "FusedMatMul", "FusedGemm", "FusedConv", "NhwcFusedConv", "ConvTranspose",
     "Attention", "MultiHeadAttention", "GRU", "LSTM"}
)


@dataclass
class LayerStatus:
    kind: str  #: "int" | "float" | "missing"
    ops: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)


@dataclass
class Inspection:
    """The optimized graph's integer op counts and each layer's status."""

    int_ops: dict[str, int]
    layers: dict[str, LayerStatus]
    op_counts: dict[str, int]

    def fallbacks(self, planned_int: list[str]) -> dict[str, str]:
        """Planned-integer layers that do not run an integer kernel, with the reason."""
        out = {}
        for layer in planned_int:
            st = self.layers.get(layer, LayerStatus("missing"))
            if st.kind == "float":
                out[layer] = f"runs in float ({', '.join(sorted(set(st.ops)))}) in the optimized graph"
            elif st.kind == "missing":
                out[layer] = "its weight is not read by any compute node of the optimized graph"
        return out


def optimized_model(path: str | Path, *, level: str = "all") -> onnx.ModelProto:
    """The graph onnxruntime actually runs (CPU EP, ``ORT_ENABLE_ALL`` by default)."""
    return ort_session.optimized_model(path, optimization=level)


def _weight_ancestors(model: onnx.ModelProto) -> dict[str, set[str]]:
    """node name → initializers reaching any of its inputs through pass-through ops."""
    inits = set(G.initializers(model))
    prod = G.producers(model)
    memo: dict[str, set[str]] = {}

    def roots(t: str, depth: int = 0) -> set[str]:
        if t in memo:
            return memo[t]
        if t in inits:
            res = {t}
        else:
            p = prod.get(t)
            res = set()
            if p is not None and p.op_type in G.PASSTHROUGH_OPS and depth < 8:
                for i in p.input[:1]:
                    res |= roots(i, depth + 1)
        memo[t] = res
        return res

    return {n.name: set().union(*(roots(i) for i in n.input if i)) if n.input else set() for n in model.graph.node}


def inspect(path: str | Path, layers: list[str], *, model: onnx.ModelProto | None = None) -> Inspection:
    """Classify each of ``layers`` in the optimized graph of ``path`` (or an already optimized ``model``)."""
    opt = model if model is not None else optimized_model(path)
    ops = Counter(n.op_type for n in opt.graph.node)
    anc = _weight_ancestors(opt)
    status: dict[str, LayerStatus] = {}
    for node in opt.graph.node:
        if node.op_type not in INT_COMPUTE and node.op_type not in FLOAT_COMPUTE:
            continue
        owners = {layer_of_initializer(init, layers) for init in anc.get(node.name, ())}
        for layer in sorted(x for x in owners if x is not None):
            st = status.setdefault(layer, LayerStatus("float"))
            st.ops.append(node.op_type)
            st.nodes.append(node.name)
            if node.op_type in INT_COMPUTE:
                st.kind = "int"
    for layer in layers:
        status.setdefault(layer, LayerStatus("missing"))
    int_ops = {k: v for k, v in sorted(ops.items()) if k in INT_OPS}
    return Inspection(int_ops, status, dict(sorted(ops.items())))

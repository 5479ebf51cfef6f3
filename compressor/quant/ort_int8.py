"""W8A8 passes on selected nodes through onnxruntime's quantizers.

* :func:`dynamic_int8` — ``quantize_dynamic`` (QOperator: ``DynamicQuantizeLinear`` + ``MatMulInteger`` /
  ``ConvInteger``, which onnxruntime fuses into ``DynamicQuantizeMatMul`` / ``MatMulIntegerToFloat``).
* :func:`static_int8` — QDQ with *our* activation ranges (:mod:`.calibration`, so the calibration method
  can differ per layer and ``mse`` exists) handed to onnxruntime's ``QDQQuantizer``. MatMul outputs are
  left in float (``OpTypesToExcludeOutputQuantization``) so onnxruntime fuses ``DQ→MatMul`` into
  ``MatMulIntegerToFloat`` instead of re-quantizing the pre-bias output (measured on MiniLM: embedding
  cosine 0.935 → 0.990); Conv/Gemm outputs are quantized so they fuse into ``QLinearConv`` / ``QGemm``, except
  a Gemm writing a graph output (a classifier's logits), which ``QGemm`` writes in float.
  "Glue" ops between quantized layers (Relu, Clip, pooling, Reshape, residual Add…) are quantized too,
  so a CNN stays in uint8 between convolutions instead of bouncing through float.

Both work on a subset of nodes; nodes outside it are untouched, so they compose with the other passes.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from devicefit.compressor.quant import calibration as C
from devicefit.compressor.quant import graph as G
from devicefit.compressor.quant.isa import IntFormat

#: ops that are quantized with their neighbours so integer tensors flow between quantized layers
GLUE_OPS = frozenset(
    {"Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool", "Reshape", "Flatten", "Squeeze",
     "Unsqueeze", "Transpose", "Add", "Concat"}
)
_OUTPUT_QUANTIZED = frozenset({"Conv", "Gemm"})


class _quiet:
    """Silence onnxruntime.quantization's warnings (pre-processing hints) during a pass."""

    def __enter__(self) -> None:
        self._level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().setLevel(self._level)


def dynamic_int8(model: onnx.ModelProto, nodes: Sequence[str], *, per_channel: bool, fmt: IntFormat) -> onnx.ModelProto:
    """Dynamic int8 (u8 activations per batch, s8 weights) on ``nodes``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if not nodes:
        return model
    with tempfile.TemporaryDirectory(prefix="devicefit-q-") as tmp, _quiet():
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        G.save(_topological(model), src)
        quantize_dynamic(
            str(src),
            str(dst),
            # quantize_dynamic rewrites Gemm into MatMul + Add first, naming the MatMul "<gemm>_MatMul"
            nodes_to_quantize=[*nodes, *(f"{n}_MatMul" for n in nodes)],
            per_channel=per_channel,
            reduce_range=fmt.reduce_range,
            weight_type=QuantType.QInt8,
            extra_options={"MatMulConstBOnly": True},
        )
        return onnx.load(str(dst))


def _topological(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its nodes in topological order. The QDQ pass appends its QuantizeLinear /
    DequantizeLinear pairs after their consumers; ``quantize_dynamic`` walks nodes in list order and, finding
    a DQ output read before it was produced, re-creates that float tensor under the same name
    ("Duplicate definition of name (<t>_DequantizeLinear_Output)" at load) when a later pass quantizes a
    node sharing the input with a static one."""
    from onnxruntime.quantization.onnx_model import ONNXModel

    m = ONNXModel(model)
    m.topological_sort()
    return m.model


def glue_nodes(model: onnx.ModelProto, layer_nodes: set[str]) -> list[str]:
    """Glue ops whose every float input comes from a quantized-output layer or another glue op."""
    inits = G.initializers(model)
    prod = G.producers(model)
    quantized_out: set[str] = set()
    for n in model.graph.node:
        if n.name in layer_nodes and n.op_type in _OUTPUT_QUANTIZED:
            quantized_out.update(n.output)
    glue: list[str] = []
    for n in model.graph.node:  # topological order
        if n.op_type not in GLUE_OPS or n.name in layer_nodes:
            continue
        data_in = [i for i in n.input if i and i not in inits]
        if n.op_type in ("Reshape", "Unsqueeze", "Squeeze", "Clip"):
            data_in = data_in[:1]
        if data_in and all(i in quantized_out for i in data_in) and all(i in prod for i in data_in):
            glue.append(n.name)
            quantized_out.update(n.output)
    return glue


def activation_tensors(model: onnx.ModelProto, nodes: set[str], types: set[str] | None = None) -> set[str]:
    """Float activations read or written by ``nodes`` (what the QDQ quantizer needs ranges for)."""
    inits = G.initializers(model)
    types = _float_tensors(model) if types is None else types
    out: set[str] = set()
    for n in model.graph.node:
        if n.name in nodes:
            out.update(t for t in (*n.input, *n.output) if t and t not in inits and t in types)
    return out


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    out = {
        vi.name
        for vi in (*g.value_info, *g.input, *g.output)
        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    # tensors shape inference could not type (contrib ops): assume float unless produced by Shape-like ops
    typed = {vi.name for vi in (*g.value_info, *g.input, *g.output)}
    for n in g.node:
        if n.op_type in ("Shape", "Size", "NonZero", "ArgMax", "ArgMin"):
            continue
        out.update(o for o in n.output if o and o not in typed)
    return out


def static_int8(
    model: onnx.ModelProto,
    nodes: Sequence[str],
    ranges: dict[str, tuple[float, float]],
    *,
    per_channel: bool,
    fmt: IntFormat,
) -> onnx.ModelProto:
    """QDQ int8 on ``nodes`` with the activation ``ranges`` given (tensor → (lo, hi))."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    if not nodes:
        return model
    act, wt = fmt.ort_types()
    inferred = onnx.shape_inference.infer_shapes(model)
    tr = TensorsData(
        CalibrationMethod.MinMax,
        {t: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for t, (lo, hi) in ranges.items()},
    )
    with _quiet():
        q = QDQQuantizer(
            inferred,
            per_channel,
            fmt.reduce_range,
            wt,
            act,
            tr,
            list(nodes),
            [],
            sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
            {"OpTypesToExcludeOutputQuantization": ["MatMul"], "MatMulConstBOnly": True},
        )
        out: onnx.ModelProto = q.quantize_model()
    _float_gemm_outputs(out)
    return out


def _float_gemm_outputs(model: onnx.ModelProto) -> int:
    """Drop the Q → DQ pair between a Gemm and a graph output (in place): onnxruntime's ``QGemm`` writes float
    itself, and re-quantizing the output only rounds it (on EfficientNet-Lite0's logits, 8-bit rounding alone
    costs 0.025 top-1 agreement: near-ties become ties). Returns how many outputs were freed."""
    outputs = {o.name for o in model.graph.output}
    prod = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    drop: list[onnx.NodeProto] = []
    for dq in model.graph.node:
        if dq.op_type != "DequantizeLinear" or dq.output[0] not in outputs:
            continue
        q = prod.get(dq.input[0])
        gemm = prod.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
        if (q is None or gemm is None or gemm.op_type != "Gemm" or readers.get(q.output[0]) != 1
                or readers.get(q.input[0]) != 1 or q.input[0] in outputs):
            continue
        gemm.output[0] = dq.output[0]
        drop += [q, dq]
    for n in drop:
        model.graph.node.remove(n)
    return len(drop) // 2


def static_ranges(
    model: onnx.ModelProto,
    nodes: set[str],
    specs_by_node: dict[str, C.RangeSpec],
    feeds: Sequence[dict[str, np.ndarray]],
) -> dict[str, tuple[float, float]]:
    """Ranges for every activation the QDQ pass will quantize; a tensor takes the spec of its first
    reader/writer among the layer nodes (glue nodes inherit minmax)."""
    specs: dict[str, C.RangeSpec] = {}
    types = _float_tensors(model)
    for n in model.graph.node:
        if n.name not in nodes:
            continue
        spec = specs_by_node.get(n.name, C.RangeSpec())
        for t in sorted(activation_tensors(model, {n.name}, types)):
            specs.setdefault(t, spec)
    return C.collect_ranges(model, specs, feeds)

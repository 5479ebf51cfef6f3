"""Lowering: rewrite a model's ``ai.devicefit`` nodes into standard ONNX ops, for runtimes without the
kernel library.

* ``Sparse24MatMul`` -> the same symmetric per-row int8 activation quantization written with standard ops
  (Abs, ReduceMax, Div, Mul, Round, Clip, Cast) + ``MatMulInteger`` (int8 x int8, the weight stored dense)
  + the same float32 epilogue: **bit-identical** to the custom op (integer accumulation is exact; the float
  steps are the same IEEE operations in the same order).
* ``LowBitMatMul``, ``mode="exact"`` (default) -> per-group int8 activation quantization, a batched
  ``MatMulInteger`` over the groups, the zero-point correction in int32, and the per-group float terms added
  one group after the other (a chain of ``Add``): **bit-identical** to the custom op.
* ``LowBitMatMul``, ``mode="matmulnbits"`` -> ``com.microsoft::MatMulNBits`` with ``bits=4`` (2/3-bit codes
  and zero points fit in 4 bits unchanged, same scales, so the dequantized weights are identical) and float
  activations (``accuracy_level=0``): equal to ``x @ dequant(W).T`` within float32 accumulation-order
  error, |err| <= K * 2^-23 * sum_k |x_k| |w_k|; it differs from the custom op by the op's int8 activation
  rounding (the custom op trades that for speed, like MatMulNBits' accuracy_level=4).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from devicefit.kernels.ops import DOMAIN, LOWBIT, SPARSE24, set_graph_nodes
from devicefit.kernels.pack import LowBitWeights, Sparse24Weights, unpack_lowbit_codes, unpack_sparse24

LowBitMode = Literal["exact", "matmulnbits"]
MS_DOMAIN = "com.microsoft"


def pack_matmulnbits4(
    codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, *, block_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer codes ``q[N, Kb]`` (Kb a multiple of block_size, values < 16), scales/zeros ``[N, Kb/block]``
    -> MatMulNBits(bits=4) tensors: B uint8 [N, blocks, block/2] (low nibble first), scales float
    [N*blocks], zero_points uint8 [N, ceil(blocks/2)] (low nibble first)."""
    n, kb = codes.shape
    blocks = kb // block_size
    c = codes.astype(np.uint8).reshape(n, blocks, block_size // 2, 2)
    b = (c[..., 0] | (c[..., 1] << np.uint8(4))).astype(np.uint8)
    z = np.zeros((n, 2 * (-(-blocks // 2))), np.uint8)
    z[:, :blocks] = zeros
    zp = (z[:, 0::2] | (z[:, 1::2] << np.uint8(4))).astype(np.uint8)
    return b, np.ascontiguousarray(scales, np.float32).reshape(-1), zp


class _Graph:
    """Collects the nodes / initializers of one lowered node (names prefixed, so they never collide)."""

    def __init__(self, prefix: str) -> None:
        import onnx

        self.onnx, self.h, self.nh = onnx, onnx.helper, onnx.numpy_helper
        self.prefix, self.nodes, self.inits, self._n = prefix, [], [], 0  # type: ignore[var-annotated]

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{self.prefix}/{hint}_{self._n}"

    def const(self, value: Any, hint: str = "c") -> str:
        name = self.name(hint)
        self.inits.append(self.nh.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str = "", n_out: int = 1, **attrs: Any) -> Any:
        outs = [self.name(hint or op_type) for _ in range(n_out)]
        self.nodes.append(self.h.make_node(op_type, inputs, outs, name=self.name(op_type), **attrs))
        return outs[0] if n_out == 1 else outs


def _quantize_int8(g: _Graph, x: str) -> tuple[str, str]:
    """Symmetric int8 over the last axis, as the kernels do: (xq int8, scale amax/127 keepdims)."""
    amax = g.op("ReduceMax", [g.op("Abs", [x]), g.const(np.array([-1], np.int64))], keepdims=1)
    f127 = g.const(np.float32(127))
    inv = g.op("Where", [g.op("Greater", [amax, g.const(np.float32(0))]), g.op("Div", [f127, amax]),
                         g.const(np.float32(0))])
    r = g.op("Clip", [g.op("Round", [g.op("Mul", [x, inv])]), g.const(np.float32(-127)), f127])
    return g.op("Cast", [r], to=g.onnx.TensorProto.INT8), g.op("Div", [amax, f127])


def _out_shape(g: _Graph, x: str, n: int) -> str:
    lead = g.op("Slice", [g.op("Shape", [x]), g.const(np.array([0], np.int64)), g.const(np.array([-1], np.int64))])
    return g.op("Concat", [lead, g.const(np.array([n], np.int64))], axis=0)


def _lower_sparse24(g: _Graph, node: Any, w: Sparse24Weights, bias: str | None) -> None:
    x, y = node.input[0], node.output[0]
    xq, sx = _quantize_int8(g, x)
    dense_t = np.ascontiguousarray(unpack_sparse24(w).T)  # int8 [K, N]
    acc = g.op("MatMulInteger", [xq, g.const(dense_t, "w_int8")])
    scale = g.op("Mul", [sx, g.const(w.scales, "scales")])
    # onnxruntime fuses MatMulInteger -> Cast -> Mul into MatMulIntegerToFloat, whose epilogue rounds
    # differently; a Reshape to the tensor's own (run-time) shape between Cast and Mul keeps them apart
    acc_f = g.op("Cast", [acc], to=g.onnx.TensorProto.FLOAT)
    acc_f = g.op("Reshape", [acc_f, g.op("Shape", [acc])])
    out = g.op("Mul", [acc_f, scale])
    g.nodes.append(g.h.make_node("Add" if bias else "Identity", [out, bias] if bias else [out], [y],
                                 name=g.name("out")))


def _lower_lowbit_exact(g: _Graph, node: Any, w: LowBitWeights, bias: str | None) -> None:
    tp = g.onnx.TensorProto
    x, y = node.input[0], node.output[0]
    ng, gs, n = w.kp // w.group_size, w.group_size, w.n
    x2 = g.op("Reshape", [x, g.const(np.array([-1, w.k], np.int64))])
    if w.kp > w.k:
        x2 = g.op("Pad", [x2, g.const(np.array([0, 0, 0, w.kp - w.k], np.int64))])
    xg = g.op("Reshape", [x2, g.const(np.array([-1, ng, gs], np.int64))])  # [M, ng, G]
    xq, xs = _quantize_int8(g, xg)  # [M, ng, G] int8, [M, ng, 1]
    xq_t = g.op("Transpose", [xq], perm=[1, 0, 2])  # [ng, M, G]
    codes = unpack_lowbit_codes(w).reshape(n, ng, gs).transpose(1, 2, 0).astype(np.int8)  # [ng, G, N]
    d = g.op("MatMulInteger", [xq_t, g.const(np.ascontiguousarray(codes), "codes")])  # [ng, M, N] int32
    xsum = g.op("ReduceSum", [g.op("Cast", [xq_t], to=tp.INT32), g.const(np.array([-1], np.int64))], keepdims=1)
    zeros = (w.zeros if w.zeros is not None else np.full((n, ng), 1 << (w.bits - 1), np.uint8)).astype(np.int32)
    d = g.op("Sub", [d, g.op("Mul", [xsum, g.const(np.ascontiguousarray(zeros.T[:, None, :]), "zeros")])])
    sc = g.op("Mul", [g.const(np.ascontiguousarray(w.scales.T[:, None, :]), "scales"),
                      g.op("Transpose", [xs], perm=[1, 0, 2])])  # [ng, M, N]: s * xs
    terms = g.op("Mul", [g.op("Cast", [d], to=tp.FLOAT), sc])
    parts = [terms] if ng == 1 else g.op("Split", [terms], n_out=ng, axis=0, num_outputs=ng)
    acc = parts[0] if ng > 1 else terms
    for p in (parts[1:] if ng > 1 else []):
        acc = g.op("Add", [acc, p])  # group order, like the kernels
    acc = g.op("Squeeze", [acc, g.const(np.array([0], np.int64))])
    if bias:
        acc = g.op("Add", [acc, bias])
    g.nodes.append(g.h.make_node("Reshape", [acc, _out_shape(g, x, n)], [y], name=g.name("out")))


def _lower_lowbit_nbits(g: _Graph, node: Any, w: LowBitWeights, bias: str | None) -> None:
    x, y = node.input[0], node.output[0]
    blocks = -(-w.k // w.group_size)
    kb = blocks * w.group_size
    zeros = w.zeros if w.zeros is not None else np.full(w.scales.shape, 1 << (w.bits - 1), np.uint8)
    b, s, zp = pack_matmulnbits4(unpack_lowbit_codes(w)[:, :kb], w.scales[:, :blocks], zeros[:, :blocks],
                                 block_size=w.group_size)
    out = g.name("nbits") if bias else y
    g.nodes.append(g.h.make_node("MatMulNBits", [x, g.const(b, "B"), g.const(s, "scales"), g.const(zp, "zp")],
                                 [out], name=g.name("MatMulNBits"), domain=MS_DOMAIN, K=w.k, N=w.n, bits=4,
                                 block_size=w.group_size, accuracy_level=0))
    if bias:
        g.nodes.append(g.h.make_node("Add", [out, bias], [y], name=g.name("out")))


def lower_node(node: Any, tensor: Any, *, lowbit: LowBitMode = "exact", index: int = 0) -> tuple[list[Any], list[Any]]:
    """The standard-op nodes and new initializers replacing one ``ai.devicefit`` ``node`` (same input X and
    output Y; names prefixed with the node's name). ``tensor(name)`` returns an initializer's array (or
    ``None`` when ``name`` is not one). The bias input (if any) is read by name, so it must stay in the graph;
    the node's other initializers are no longer read. Needs default-domain opset >= 18 (ReduceMax with
    ``axes`` as an input; the caller raises it); ``mode="matmulnbits"`` needs the ``com.microsoft`` domain."""
    import onnx

    if lowbit not in ("exact", "matmulnbits"):
        raise ValueError(f"lowbit must be 'exact' or 'matmulnbits', got {lowbit!r}")

    def required(i: int) -> np.ndarray:
        name = node.input[i] if i < len(node.input) else ""
        if not name:
            raise ValueError(f"{node.op_type} node {node.name!r} lacks its required input #{i}")
        array = tensor(name)
        if array is None:
            raise ValueError(f"input {name!r} of {node.op_type} node {node.name!r} must be an initializer")
        return np.asarray(array)

    def optional(i: int) -> np.ndarray | None:
        return required(i) if i < len(node.input) and node.input[i] else None

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    g = _Graph(node.name or f"devicefit_{index}")
    bias = node.input[4] if len(node.input) > 4 and node.input[4] else None
    if node.op_type == SPARSE24:
        values, idx, scales = required(1), required(2), required(3)
        k = int(attrs.get("K", values.shape[1] * 2))
        _lower_sparse24(g, node, Sparse24Weights(values=values, index=idx, scales=scales, k=k), bias)
    elif node.op_type == LOWBIT:
        bits, gs = int(attrs["bits"]), int(attrs["group_size"])
        packed, scales, zeros = required(1), required(2), optional(3)
        k = int(attrs.get("K", packed.shape[1] * 8 // bits))
        w = LowBitWeights(packed=packed, scales=scales, zeros=zeros, bits=bits, group_size=gs, k=k)
        if lowbit == "exact":
            _lower_lowbit_exact(g, node, w, bias)
        else:
            _lower_lowbit_nbits(g, node, w, bias)
    else:
        raise ValueError(f"unknown {DOMAIN} op {node.op_type!r} (node {node.name!r})")
    return g.nodes, g.inits


def lower_model(model: Any, *, lowbit: LowBitMode = "exact", opset: int = 21) -> Any:
    """A copy of ``model`` (onnx ModelProto) with every ``ai.devicefit`` node rewritten into standard ops
    (see the module docstring). The weights must be initializers. Needs ``opset`` >= 18 (ReduceMax with
    ``axes`` as an input); the model's default-domain opset is raised to it when lower."""
    import onnx

    if lowbit not in ("exact", "matmulnbits"):
        raise ValueError(f"lowbit must be 'exact' or 'matmulnbits', got {lowbit!r}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}

    def tensor(name: str) -> np.ndarray | None:
        return onnx.numpy_helper.to_array(inits[name]) if name in inits else None

    new_nodes: list[Any] = []
    used: set[str] = set()
    needs_ms = False
    for idx, node in enumerate(graph.node):
        if node.domain != DOMAIN:
            new_nodes.append(node)
            continue
        nodes, new_inits = lower_node(node, tensor, lowbit=lowbit, index=idx)
        used.update(n for n in node.input[1:4] if n)  # the bias (input 4) stays an initializer of the lowered graph
        needs_ms |= node.op_type == LOWBIT and lowbit == "matmulnbits"
        new_nodes.extend(nodes)
        graph.initializer.extend(new_inits)
    set_graph_nodes(graph, new_nodes, used)
    imports = [o for o in out.opset_import if o.domain not in (DOMAIN, "", "ai.onnx")]
    imports.append(onnx.helper.make_opsetid("", max(opset, *(o.version for o in out.opset_import
                                                              if o.domain in ("", "ai.onnx")))))
    if needs_ms and not any(o.domain == MS_DOMAIN for o in imports):
        imports.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    del out.opset_import[:]
    out.opset_import.extend(imports)
    return out

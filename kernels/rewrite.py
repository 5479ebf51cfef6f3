"""Graph rewrites onto the ``ai.devicefit`` ops: replace ``MatMul`` nodes whose weight is a 2-D float
initializer by ``Sparse24MatMul`` (2:4 magnitude pruning + per-channel int8) or ``LowBitMatMul``
(round-to-nearest group-wise codes; GPTQ codes go through :func:`devicefit.kernels.pack_lowbit` instead).

The exporter (#13) decides which layers get which op; these helpers do the tensor and node plumbing.
A ``MatMul`` followed by an ``Add`` of a 1-D float initializer (a Linear layer's bias) is fused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from devicefit.kernels.ops import DOMAIN, DOMAIN_VERSION, lowbit_node, set_graph_nodes, sparse24_node
from devicefit.kernels.pack import pack_lowbit, pack_sparse24, quantize_lowbit_rtn


def _rewrite(model: Any, make: Callable[[str, str, np.ndarray, str, np.ndarray | None], tuple[Any, list[Any]]],
             names: Iterable[str] | None) -> tuple[Any, list[str]]:
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {i.name: i for i in g.initializer}
    wanted = set(names) if names is not None else None
    consumers: dict[str, list[Any]] = {}
    for node in g.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in g.output}
    nodes: list[Any] = []
    replaced: list[str] = []
    drop_nodes: set[int] = set()
    drop_inits: set[str] = set()
    for node in g.node:
        if id(node) in drop_nodes:
            continue
        w = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if w is None or len(w.dims) != 2 or w.data_type != onnx.TensorProto.FLOAT or (
                wanted is not None and node.name not in wanted):
            nodes.append(node)
            continue
        weight = onnx.numpy_helper.to_array(w).T  # MatMul's B is [K, N]; the ops take W[N, K]
        y, bias = node.output[0], None
        users = consumers.get(y, [])
        if len(users) == 1 and users[0].op_type == "Add" and y not in graph_outputs:
            other = [n for n in users[0].input if n != y]
            b = inits.get(other[0]) if len(other) == 1 else None
            if b is not None and list(b.dims) == [weight.shape[0]] and b.data_type == onnx.TensorProto.FLOAT:
                bias, y = onnx.numpy_helper.to_array(b), users[0].output[0]
                drop_nodes.add(id(users[0]))
                drop_inits.add(b.name)
        new, new_inits = make(node.input[0], y, weight, node.name or f"devicefit_{len(replaced)}", bias)
        nodes.append(new)
        g.initializer.extend(new_inits)
        drop_inits.add(w.name)
        replaced.append(node.name)
    set_graph_nodes(g, nodes, drop_inits)
    if replaced and not any(o.domain == DOMAIN for o in out.opset_import):
        out.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return out, replaced


def to_sparse24(model: Any, *, names: Iterable[str] | None = None) -> tuple[Any, list[str]]:
    """Copy of ``model`` with its weight ``MatMul`` nodes (or only those named in ``names``) replaced by
    2:4-pruned ``Sparse24MatMul``; returns (model, names of the replaced nodes)."""

    def make(x: str, y: str, w: np.ndarray, prefix: str, bias: np.ndarray | None) -> tuple[Any, list[Any]]:
        return sparse24_node(x, y, pack_sparse24(w), prefix=prefix, bias=bias)

    return _rewrite(model, make, names)


def to_lowbit(model: Any, *, bits: int, group_size: int = 128,
              names: Iterable[str] | None = None) -> tuple[Any, list[str]]:
    """Copy of ``model`` with its weight ``MatMul`` nodes replaced by round-to-nearest ``LowBitMatMul``."""

    def make(x: str, y: str, w: np.ndarray, prefix: str, bias: np.ndarray | None) -> tuple[Any, list[Any]]:
        q, s, z = quantize_lowbit_rtn(w, bits=bits, group_size=group_size)
        return lowbit_node(x, y, pack_lowbit(q, s, z, bits=bits, group_size=group_size), prefix=prefix, bias=bias)

    return _rewrite(model, make, names)

"""ONNX node builders for the ``ai.devicefit`` ops (``onnx`` is imported when a builder is called).

``Sparse24MatMul(X, values, index, scales[, bias]) -> Y``  attribute ``K`` (informative)
``LowBitMatMul(X, packed, scales[, zero_points][, bias]) -> Y``  attributes ``bits``, ``group_size``, ``K``

``K`` is the logical input width (the kernels take it from X; the lowering uses it).

X is float32 ``[..., K]``; Y is float32 ``[..., N]``. Register the library with
:func:`session_options` (or ``SessionOptions.register_custom_ops_library(library_path())``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from devicefit.kernels.pack import LowBitWeights, Sparse24Weights

DOMAIN = "ai.devicefit"
DOMAIN_VERSION = 1
SPARSE24 = "Sparse24MatMul"
LOWBIT = "LowBitMatMul"


def _onnx() -> Any:
    import onnx

    return onnx


def sparse24_node(
    x: str, y: str, w: Sparse24Weights, *, prefix: str, bias: np.ndarray | None = None
) -> tuple[Any, list[Any]]:
    """A ``Sparse24MatMul`` node and its initializers (named ``{prefix}.values`` etc.)."""
    onnx = _onnx()
    nh = onnx.numpy_helper
    inits = [nh.from_array(w.values, f"{prefix}.values"), nh.from_array(w.index, f"{prefix}.index"),
             nh.from_array(w.scales, f"{prefix}.scales")]
    inputs = [x, *(i.name for i in inits)]
    if bias is not None:
        inits.append(nh.from_array(np.asarray(bias, np.float32), f"{prefix}.bias"))
        inputs.append(f"{prefix}.bias")
    node = onnx.helper.make_node(SPARSE24, inputs, [y], name=prefix, domain=DOMAIN, K=w.k)
    return node, inits


def lowbit_node(
    x: str, y: str, w: LowBitWeights, *, prefix: str, bias: np.ndarray | None = None
) -> tuple[Any, list[Any]]:
    """A ``LowBitMatMul`` node and its initializers."""
    onnx = _onnx()
    nh = onnx.numpy_helper
    inits = [nh.from_array(w.packed, f"{prefix}.packed"), nh.from_array(w.scales, f"{prefix}.scales")]
    inputs = [x, *(i.name for i in inits)]
    if w.zeros is not None:
        inits.append(nh.from_array(w.zeros, f"{prefix}.zero_points"))
        inputs.append(f"{prefix}.zero_points")
    elif bias is not None:
        inputs.append("")  # absent optional input
    if bias is not None:
        inits.append(nh.from_array(np.asarray(bias, np.float32), f"{prefix}.bias"))
        inputs.append(f"{prefix}.bias")
    node = onnx.helper.make_node(LOWBIT, inputs, [y], name=prefix, domain=DOMAIN, bits=w.bits,
                                 group_size=w.group_size, K=w.k)
    return node, inits


def single_op_model(node: Any, inits: list[Any], *, k: int | str, n: int, m: int | str = "M", opset: int = 21) -> Any:
    """A one-node model ``X[m, k] -> Y[m, n]`` around ``node`` (inputs named X / Y)."""
    onnx = _onnx()
    h, tp = onnx.helper, onnx.TensorProto
    graph = h.make_graph([node], "devicefit_kernel", [h.make_tensor_value_info("X", tp.FLOAT, [m, k])],
                         [h.make_tensor_value_info("Y", tp.FLOAT, [m, n])], initializer=inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset), h.make_opsetid(DOMAIN, DOMAIN_VERSION)],
                         producer_name="devicefit")
    model.ir_version = 10
    return model


def session_options(threads: int = 1) -> Any:
    """onnxruntime ``SessionOptions`` with the kernel library registered (built first if needed)."""
    from devicefit.kernels import ort_session
    from devicefit.kernels.builder import library_path

    return ort_session.session_options(threads=threads, custom_ops=[str(library_path())])


def set_graph_nodes(graph: Any, nodes: list[Any], maybe_unused: set[str]) -> None:
    """Replace ``graph``'s nodes by ``nodes`` and drop the initializers named in ``maybe_unused`` that no
    node reads any more (shared by the rewrites and the lowering)."""
    still_used = {name for node in nodes for name in node.input}
    keep = [i for i in graph.initializer if i.name not in maybe_unused or i.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    del graph.node[:]
    graph.node.extend(nodes)

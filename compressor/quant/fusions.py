"""Exact fp32 graph rewrites applied before quantization (the result computes the same function).

* :func:`fuse_gelu` — the dynamo exporter writes ``gelu(x)`` (erf form) at opset < 20 as five ops,
  ``x * (0.5 * (erf(x / √2) + 1))``, which onnxruntime's own Gelu fusion does not match (its pattern
  multiplies in another order). One ``com.microsoft.Gelu`` replaces them: on MiniLM the five element-wise
  ops cost about as much as a tenth of the int8 matmul time.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from devicefit.compressor.quant import graph as G
from devicefit.compressor.quant.nbits import MS_DOMAIN


def _const(model: onnx.ModelProto, name: str, inits: dict[str, onnx.TensorProto]) -> float | None:
    t = inits.get(name)
    if t is None:
        return None
    a = G.to_array(t)
    return float(a.reshape(-1)[0]) if a.size == 1 else None


def _other(node: onnx.NodeProto, known: str) -> str:
    return node.input[1] if node.input[0] == known else node.input[0]


def fuse_gelu(model: onnx.ModelProto) -> int:
    """Replace ``Div(x,√2) → Erf → Add(1) → Mul(0.5) → Mul(x)`` (Mul operands in any order) by ``Gelu``."""
    inits = G.initializers(model)
    cons = G.consumers(model)
    fused = 0
    remove: set[str] = set()
    for div in list(model.graph.node):
        if div.op_type != "Div" or div.name in remove:
            continue
        x = div.input[0]
        c = _const(model, div.input[1], inits)
        if c is None or not np.isclose(c, math.sqrt(2.0), rtol=1e-5):
            continue
        chain = []
        cur = div
        ok = True
        for op, want in (("Erf", None), ("Add", 1.0), ("Mul", 0.5)):
            nxt = cons.get(cur.output[0], [])
            if len(nxt) != 1 or nxt[0].op_type != op:
                ok = False
                break
            nxt_node = nxt[0]
            if want is not None and _const(model, _other(nxt_node, cur.output[0]), inits) != want:
                ok = False
                break
            chain.append(nxt_node)
            cur = nxt_node
        if not ok:
            continue
        last = cons.get(cur.output[0], [])
        if len(last) != 1 or last[0].op_type != "Mul" or _other(last[0], cur.output[0]) != x:
            continue
        final = last[0]
        gelu = onnx.helper.make_node("Gelu", [x], [final.output[0]], name=f"{div.name}_Gelu", domain=MS_DOMAIN)
        G.replace_node(model, final, [gelu])
        remove.update(n.name for n in (div, *chain))
        fused += 1
    if fused:
        keep = [n for n in model.graph.node if n.name not in remove]
        del model.graph.node[:]
        model.graph.node.extend(keep)
        G.ensure_opset(model, MS_DOMAIN, 1)
        G.remove_unused_initializers(model)
    return fused

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


def _single(cons: dict[str, list[onnx.NodeProto]], t: str, op: str) -> onnx.NodeProto | None:
    nxt = cons.get(t, [])
    return nxt[0] if len(nxt) == 1 and nxt[0].op_type == op else None


def _perm(node: onnx.NodeProto) -> list[int]:
    return list(G.attr(node, "perm", []) or [])  # type: ignore[call-overload]


def _heads(model: onnx.ModelProto, reshape: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> int | None:
    """Number of heads from a ``Reshape(x, [B, S, H, D])`` (shape from an initializer or a Concat)."""
    shape = reshape.input[1]
    if shape in inits:
        arr = G.to_array(inits[shape]).reshape(-1)
        return int(arr[2]) if arr.size == 4 else None
    p = G.producers(model).get(shape)
    if p is None or p.op_type != "Concat" or len(p.input) != 4 or p.input[2] not in inits:
        return None
    return int(G.to_array(inits[p.input[2]]).reshape(-1)[0])


def _mask_source(model: onnx.ModelProto, bias: str, inits: dict[str, onnx.TensorProto]) -> tuple[str, float] | None:
    """``(1 - Cast(mask))[:, None, None, :] * c`` → (the int mask graph input, c)."""
    prod = G.producers(model)
    mul = prod.get(bias)
    if mul is None or mul.op_type != "Mul":
        return None
    for a, b in ((0, 1), (1, 0)):
        c = _const(model, mul.input[b], inits)
        unsq = prod.get(mul.input[a])
        if c is None or unsq is None or unsq.op_type != "Unsqueeze":
            continue
        sub = prod.get(unsq.input[0])
        if sub is None or sub.op_type != "Sub" or _const(model, sub.input[0], inits) != 1.0:
            continue
        cast = prod.get(sub.input[1])
        if cast is not None and cast.op_type == "Cast" and cast.input[0] in {i.name for i in model.graph.input}:
            return cast.input[0], c
    return None


def fuse_attention(model: onnx.ModelProto) -> int:
    """Replace the exported multi-head attention core — per head ``softmax(q kᵀ · scale + mask) v`` written
    as Reshape/Transpose/MatMul/Mul/Add/Softmax/MatMul/Transpose/Reshape — by one
    ``com.microsoft.MultiHeadAttention`` reading the projected q, k, v ``[B, S, H·D]`` and the 0/1 padding
    mask. The q/k/v/output Linears stay separate nodes (so they are quantized like any layer)."""
    inits = G.initializers(model)
    cons = G.consumers(model)
    prod = G.producers(model)
    new_nodes: list[tuple[onnx.NodeProto, onnx.NodeProto]] = []
    remove: set[str] = set()
    mask_casts: dict[str, str] = {}
    for sm in list(model.graph.node):
        if sm.op_type != "Softmax" or int(G.attr(sm, "axis", -1) or -1) != -1:  # type: ignore[call-overload]
            continue
        add = prod.get(sm.input[0])
        mul = prod.get(add.input[0]) if add is not None and add.op_type == "Add" else None
        if add is None or mul is None or mul.op_type != "Mul":
            continue
        scale = _const(model, mul.input[1], inits)
        qk = prod.get(mul.input[0])
        mask = _mask_source(model, add.input[1], inits)
        pv = _single(cons, sm.output[0], "MatMul")
        if scale is None or qk is None or qk.op_type != "MatMul" or mask is None or pv is None:
            continue
        tr_out = _single(cons, pv.output[0], "Transpose")
        rs_out = _single(cons, tr_out.output[0], "Reshape") if tr_out is not None else None
        tq, tk, tv = prod.get(qk.input[0]), prod.get(qk.input[1]), prod.get(pv.input[1])
        parts = [tq, tk, tv]
        if rs_out is None or tr_out is None or any(t is None or t.op_type != "Transpose" for t in parts):
            continue
        assert tq is not None and tk is not None and tv is not None
        if (_perm(tq), _perm(tk), _perm(tv), _perm(tr_out)) != ([0, 2, 1, 3], [0, 2, 3, 1], [0, 2, 1, 3], [0, 2, 1, 3]):
            continue
        rq, rk, rv = (prod.get(t.input[0]) for t in (tq, tk, tv))
        if any(r is None or r.op_type != "Reshape" for r in (rq, rk, rv)):
            continue
        assert rq is not None and rk is not None and rv is not None
        heads = _heads(model, rq, inits)
        if heads is None or any(len(cons.get(x.output[0], [])) != 1 for x in (rq, rk, rv, tq, tk, tv, qk, mul, add)):
            continue
        src, fill = mask
        if src not in mask_casts:
            mask_casts[src] = f"{src}_int32"
        attn = onnx.helper.make_node(
            "MultiHeadAttention", [rq.input[0], rk.input[0], rv.input[0], "", mask_casts[src]], [rs_out.output[0]],
            name=f"{sm.name}_MultiHeadAttention", domain=MS_DOMAIN,
        )
        attn.attribute.extend([onnx.helper.make_attribute("num_heads", heads),
                                onnx.helper.make_attribute("scale", scale),
                                onnx.helper.make_attribute("mask_filter_value", fill)])
        new_nodes.append((rs_out, attn))
        remove.update(x.name for x in (rq, rk, rv, tq, tk, tv, qk, mul, add, sm, pv, tr_out))
    if not new_nodes:
        return 0
    for old, new in new_nodes:
        G.replace_node(model, old, [new])
    keep = [n for n in model.graph.node if n.name not in remove]
    casts = [onnx.helper.make_node("Cast", [src], [dst], to=onnx.TensorProto.INT32, name=f"{dst}_Cast")
             for src, dst in mask_casts.items()]
    del model.graph.node[:]
    model.graph.node.extend(casts + keep)
    G.ensure_opset(model, MS_DOMAIN, 1)
    G.remove_dead_nodes(model)
    return len(new_nodes)

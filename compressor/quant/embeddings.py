"""int8 embedding tables: ``Gather`` on a large float table → ``com.microsoft.GatherBlockQuantized``.

Embedding tables are not plan layers (plans name Linear / Conv), yet in a transformer like MiniLM the word
embeddings are half the parameters. When a plan quantizes, tables with at least :data:`MIN_ELEMENTS`
elements are stored as uint8 (symmetric around 128, the op's default zero point) with one float scale per
``block_size`` consecutive values of a row; only the gathered rows are dequantized at run time. A table is
left alone when the plan puts ``KeepFloat`` on its module (``embeddings.word_embeddings``).
"""

from __future__ import annotations

import numpy as np
import onnx

from devicefit.compressor.quant import graph as G
from devicefit.compressor.quant.nbits import MS_DOMAIN

MIN_ELEMENTS = 1 << 16


def table_name(init: str) -> str:
    return init.removesuffix(".weight")


def candidates(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Gather nodes reading rows (axis 0) of a 2-D float initializer with ≥ MIN_ELEMENTS values."""
    inits = G.initializers(model)
    out = []
    for n in model.graph.node:
        if n.op_type != "Gather" or n.input[0] not in inits or int(G.attr(n, "axis", 0) or 0) != 0:  # type: ignore[call-overload]
            continue
        t = inits[n.input[0]]
        if len(t.dims) == 2 and t.data_type == onnx.TensorProto.FLOAT and int(np.prod(t.dims)) >= MIN_ELEMENTS:
            out.append(n)
    return out


def quantize_gather(model: onnx.ModelProto, node: onnx.NodeProto, *, block_size: int = 32) -> str:
    """Replace ``node`` by an 8-bit ``GatherBlockQuantized``; returns the table's name."""
    table = node.input[0]
    w = G.to_array(G.initializers(model)[table]).astype(np.float32)
    rows, dim = w.shape
    bs = block_size
    while bs > 16 and dim % bs:
        bs //= 2
    if dim % bs:
        raise ValueError(f"embedding {table}: width {dim} is not a multiple of 16")
    blocks = w.reshape(rows, dim // bs, bs)
    amax = np.abs(blocks).max(axis=-1)
    scale = np.where(amax == 0, 1.0, amax / 127.0).astype(np.float32)
    q = np.clip(np.round(blocks / scale[..., None]) + 128, 0, 255).astype(np.uint8).reshape(rows, dim)
    base = f"{table}_q8"
    G.set_initializer(model, base, q)
    G.set_initializer(model, f"{base}_scales", scale)
    new = onnx.helper.make_node(
        "GatherBlockQuantized", [base, node.input[1], f"{base}_scales"], list(node.output),
        name=f"{node.name}_q8", domain=MS_DOMAIN,
    )
    new.attribute.extend(
        [onnx.helper.make_attribute(k, v) for k, v in
         {"bits": 8, "block_size": bs, "gather_axis": 0, "quantize_axis": 1}.items()]
    )
    G.replace_node(model, node, [new])
    G.ensure_opset(model, MS_DOMAIN, 1)
    G.remove_unused_initializers(model)
    return table_name(table)

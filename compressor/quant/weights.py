"""Storage-only weight formats (compute stays float by design):

* :func:`float16` — the layer's weight (and bias) stored as float16 with a ``Cast`` back to float32 in
  front of the unchanged compute node. Halves the layer's bytes; onnxruntime's CPU kernels then run in
  float32 (it constant-folds the Cast at load). (``onnxconverter-common`` is not a dependency, so this is
  our own small rewrite.)
* :func:`int8_storage` — ``Int8WeightOnly`` for Conv and recurrent (GRU / LSTM W and R, one scale per gate
  row) layers (Linear layers use 8-bit ``MatMulNBits``):
  int8 weight → ``Cast`` → ``Mul`` (per-output-channel scale) in front of the float Conv. onnxruntime
  constant-folds Cast/Mul at load, so the file is 4x smaller and the model runs exactly as fast as fp32.
  (A ``DequantizeLinear`` there is *not* folded — onnxruntime keeps QDQ nodes for fusion — and would
  dequantize the weights on every run: measured 3x slower than fp32 on EfficientNet-Lite0.)
* :func:`int8_dequant` — the ``DequantizeLinear`` form (what an unfused QDQ weight looks like; tests).
"""

from __future__ import annotations

import numpy as np
import onnx

from devicefit.compressor.quant import graph as G
from devicefit.compressor.quant.mapping import LayerNode


def _rewire(model: onnx.ModelProto, node_name: str, old: str, new: str) -> None:
    for n in model.graph.node:
        if n.name == node_name:
            for i, x in enumerate(n.input):
                if x == old:
                    n.input[i] = new


def float16(model: onnx.ModelProto, ln: LayerNode) -> None:
    """Store the layer's weight / bias in float16 (+ Cast to float32 before use)."""
    inits = G.initializers(model)
    node = G.node_by_name(model)[ln.node]
    targets = [ln.weight] + ([ln.bias] if ln.bias else [])
    readers = {ln.transpose or ln.node}
    if ln.bias_add:
        readers.add(ln.bias_add)
    casts = []
    for name in targets:
        arr = G.to_array(inits[name]).astype(np.float16)
        h = f"{name}_fp16"
        G.set_initializer(model, h, arr)
        out = f"{name}_fp16_cast"
        casts.append(onnx.helper.make_node("Cast", [h], [out], to=onnx.TensorProto.FLOAT, name=f"{name}_fp16_cast"))
        for r in readers:
            _rewire(model, r, name, out)
    first = G.node_by_name(model)[ln.transpose] if ln.transpose else node
    G.topo_insert(model, casts, before=first)
    G.remove_unused_initializers(model)


def int8_dequant(model: onnx.ModelProto, ln: LayerNode, *, per_channel: bool = True) -> None:
    """int8 weight (symmetric) + ``DequantizeLinear`` feeding the layer's compute node."""
    w = G.to_array(G.initializers(model)[ln.weight]).astype(np.float32)
    axis = 1 if ln.layout == "kn" else 0
    if per_channel:
        red = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.abs(w).max(axis=red)
    else:
        amax = np.array(np.abs(w).max())
    scale = np.where(amax == 0, 1.0, amax / 127.0).astype(np.float32)
    shape = [1] * w.ndim
    if per_channel:
        shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    base = f"{ln.weight}_int8"
    G.set_initializer(model, base, q)
    G.set_initializer(model, f"{base}_scale", scale)
    G.set_initializer(model, f"{base}_zero_point", np.zeros(scale.shape, np.int8))
    out = f"{base}_dequantized"
    dq = onnx.helper.make_node(
        "DequantizeLinear", [base, f"{base}_scale", f"{base}_zero_point"], [out], name=f"{base}_DequantizeLinear"
    )
    if per_channel:
        dq.attribute.append(onnx.helper.make_attribute("axis", axis))
    reader = ln.transpose or ln.node
    _rewire(model, reader, ln.weight, out)
    G.topo_insert(model, [dq], before=G.node_by_name(model)[reader])
    G.remove_unused_initializers(model)


def int8_storage(model: onnx.ModelProto, ln: LayerNode, *, per_channel: bool = True) -> None:
    """int8 weight + ``Cast`` + ``Mul`` (folded to a float weight by onnxruntime at load)."""
    w = G.to_array(G.initializers(model)[ln.weight]).astype(np.float32)
    axis = 1 if ln.layout == "kn" else 0
    red = tuple(i for i in range(w.ndim) if i != axis) if per_channel else tuple(range(w.ndim))
    if ln.layout == "rnn" and per_channel:  # GRU / LSTM W or R [directions, gates*hidden, in]: one scale per row
        red = (w.ndim - 1,)
    amax = np.abs(w).max(axis=red, keepdims=True)
    scale = np.where(amax == 0, 1.0, amax / 127.0).astype(np.float32)
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    base = f"{ln.weight}_int8"
    G.set_initializer(model, base, q)
    G.set_initializer(model, f"{base}_scale", scale)
    cast = onnx.helper.make_node("Cast", [base], [f"{base}_float"], to=onnx.TensorProto.FLOAT, name=f"{base}_Cast")
    mul = onnx.helper.make_node("Mul", [f"{base}_float", f"{base}_scale"], [f"{base}_dequantized"], name=f"{base}_Mul")
    reader = ln.transpose or ln.node
    _rewire(model, reader, ln.weight, f"{base}_dequantized")
    G.topo_insert(model, [cast, mul], before=G.node_by_name(model)[reader])
    G.remove_unused_initializers(model)

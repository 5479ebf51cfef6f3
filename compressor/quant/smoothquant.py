"""SmoothQuant (Xiao et al., 2022): migrate activation outliers into the weights before W8A8.

For the layers reading one activation tensor ``X`` (e.g. query/key/value after a LayerNorm), per input
channel ``j``: ``s_j = max|X_j|^α / max|W_j|^(1-α)`` (weight max over all those layers). Then
``X' = X / s`` and ``W' = diag(s) W`` leave the product unchanged while flattening the activation range.

``1/s`` is folded into the producing ``LayerNormalization`` (γ and β) when every reader of ``X`` is being
smoothed; otherwise (e.g. the LayerNorm output also feeds a residual Add, as in BERT) a ``Mul`` by ``1/s``
is inserted on the branch feeding the smoothed layers only. The smoothed layers are then quantized by the
static int8 pass.
"""

from __future__ import annotations

import numpy as np
import onnx

from devicefit.compressor.quant import graph as G
from devicefit.compressor.quant.mapping import LayerNode


class AbsMax:
    """Running per-channel max |x| over the last axis."""

    def __init__(self) -> None:
        self.value: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:
        m = np.abs(np.asarray(x, np.float32)).reshape(-1, x.shape[-1]).max(axis=0)
        self.value = m if self.value is None else np.maximum(self.value, m)


def smoothing_scales(act_absmax: np.ndarray, w_absmax: np.ndarray, alpha: float) -> np.ndarray:
    a = np.maximum(act_absmax.astype(np.float64), 1e-5)
    w = np.maximum(w_absmax.astype(np.float64), 1e-5)
    s = a**alpha / w ** (1.0 - alpha)
    return np.clip(s, 1e-5, 1e5).astype(np.float32)


def _scale_weight(model: onnx.ModelProto, ln: LayerNode, s: np.ndarray) -> None:
    w = G.to_array(G.initializers(model)[ln.weight]).astype(np.float32)
    w = w * s[:, None] if ln.layout == "kn" else w * s[None, :]
    G.set_initializer(model, ln.weight, w)


def apply(model: onnx.ModelProto, groups: dict[str, list[LayerNode]], act_absmax: dict[str, np.ndarray], alpha: float) -> dict[str, str]:
    """Smooth each group (input tensor → its layers). Returns input tensor → "folded:<LN>" | "mul:<node>"."""
    how: dict[str, str] = {}
    for tensor, lns in groups.items():
        if tensor not in act_absmax or not lns:
            continue
        w_absmax = np.max([np.abs(ln.weight_kn(model)).max(axis=1) for ln in lns], axis=0)
        s = smoothing_scales(act_absmax[tensor], w_absmax, alpha)
        for ln in lns:
            _scale_weight(model, ln, s)
        prod = G.producers(model).get(tensor)
        readers = {n.name for n in G.consumers(model).get(tensor, [])}
        smoothed = {ln.node for ln in lns}
        is_output = tensor in {o.name for o in model.graph.output}
        if prod is not None and prod.op_type == "LayerNormalization" and readers <= smoothed and not is_output:
            inits = G.initializers(model)
            for idx in (1, 2):
                if len(prod.input) > idx and prod.input[idx] in inits:
                    v = G.to_array(inits[prod.input[idx]]).astype(np.float32)
                    G.set_initializer(model, prod.input[idx], v / s)
            how[tensor] = f"folded:{prod.name}"
            continue
        inv = f"{tensor}.smooth_inv_scale"
        out = f"{tensor}.smoothed"
        G.set_initializer(model, inv, (1.0 / s).astype(np.float32))
        mul = onnx.helper.make_node("Mul", [tensor, inv], [out], name=f"{tensor}.smooth_mul")
        first = next(n for n in model.graph.node if n.name in smoothed)
        G.topo_insert(model, [mul], before=first)
        for n in model.graph.node:
            if n.name in smoothed:
                for i, x in enumerate(n.input):
                    if x == tensor:
                        n.input[i] = out
        how[tensor] = f"mul:{mul.name}"
    return how

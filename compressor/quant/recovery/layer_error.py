"""Per-layer output SQNR of a QDQ graph against the fp32 graph it was quantized from.

Layers are matched by node name (onnxruntime's QDQ quantizer keeps the names of the nodes it wraps); both
graphs run unoptimized on the same feeds, and each Conv / Gemm / MatMul output is compared before any
activation, so the error is the layer's own plus what flows in from upstream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from devicefit.compressor.quant import calibration as C

LAYER_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class LayerError:
    """One layer's output error: SQNR in dB (signal power / error power) and the weight it reads."""

    node: str
    op_type: str
    weight: str
    sqnr_db: float


def matched_outputs(fp32: onnx.ModelProto, quant: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """node name → (fp32 output tensor, quantized output tensor) for layers present in both graphs."""
    qnodes = {n.name: n for n in quant.graph.node if n.op_type in LAYER_OPS}
    return {
        n.name: (n.output[0], qnodes[n.name].output[0])
        for n in fp32.graph.node
        if n.op_type in LAYER_OPS and n.name in qnodes
    }


class _Power:
    """Running Σx² and Σ(x−y)² for one tensor pair."""

    def __init__(self) -> None:
        self.signal = 0.0
        self.noise = 0.0


def tapped(model: onnx.ModelProto, tensors: Sequence[str]) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """A function running ``model`` (unoptimized) on one feed and returning ``tensors`` (extra outputs)."""
    names = list(dict.fromkeys(tensors))
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    existing = {o.name for o in aug.graph.output}
    aug.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in names if t not in existing)
    sess = C.session(aug)
    return lambda feed: dict(zip(names, sess.run(names, feed), strict=True))


def layer_errors(
    fp32: onnx.ModelProto, quant: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]]
) -> list[LayerError]:
    """SQNR of every matched layer output over ``feeds``, in fp32 graph order."""
    pairs = matched_outputs(fp32, quant)
    run_ref = tapped(fp32, [a for a, _ in pairs.values()])
    run_q = tapped(quant, [b for _, b in pairs.values()])
    acc = {k: _Power() for k in pairs}
    for feed in feeds:
        r, q = run_ref(feed), run_q(feed)
        for node, (a, b) in pairs.items():
            x, y = r[a].astype(np.float64), q[b].astype(np.float64)
            acc[node].signal += float(np.sum(x * x))
            acc[node].noise += float(np.sum((x - y) ** 2))
    nodes = {n.name: n for n in fp32.graph.node}
    out = []
    for node, p in acc.items():
        n = nodes[node]
        sqnr = 10.0 * np.log10(p.signal / p.noise) if p.noise > 0 else float("inf")
        out.append(LayerError(node, n.op_type, n.input[1] if len(n.input) > 1 else "", float(sqnr)))
    return out

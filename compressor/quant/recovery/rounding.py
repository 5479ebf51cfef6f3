"""Output-aware rounding of the int8 weights of a QDQ graph (GPTQ / optimal-brain-quantizer updates).

Round-to-nearest minimizes each weight's own error; what matters is the layer's output error
‖(W − Ŵ)X‖² on the inputs the layer really receives. For every dense layer (1x1 Conv with ``group=1``, Gemm)
whose weight is an int8 ``DequantizeLinear`` initializer with a per-output-channel scale, the Hessian
H = XᵀX of its *dequantized* input is accumulated on calibration feeds and the weight is re-rounded column by
column on the same grid (same scales, same integer range, e.g. 7-bit ``reduce_range`` weights), spreading each
column's rounding error over the columns not yet rounded (Frantar et al. 2022). Only the integer weight values
change, so onnxruntime's fusions and speed are exactly those of the plain graph. Run it before
:func:`~.bias_correction.correct_biases` (which then removes the mean shift that remains).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from devicefit.compressor.quant import graph as G
from devicefit.compressor.quant.gptq import single_thread
from devicefit.compressor.quant.recovery.layer_error import tapped


@dataclass(frozen=True)
class _Dense:
    node: str
    input: str  #: the dequantized activation the layer reads
    quantized: str  #: int8 weight initializer
    scale: str
    fp32_weight: np.ndarray  #: [N, K]
    transposed: bool  #: stored as [K, N] (Gemm without transB)


def _int_attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _dense_layers(fp32: onnx.ModelProto, quant: onnx.ModelProto) -> list[_Dense]:
    inits, prod = G.initializers(quant), G.producers(quant)
    fp_nodes, fp_inits = {n.name: n for n in fp32.graph.node}, G.initializers(fp32)
    out = []
    for n in quant.graph.node:
        if n.op_type not in ("Conv", "Gemm") or n.name not in fp_nodes or n.input[1] not in prod:
            continue
        dq = prod[n.input[1]]
        if dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or dq.input[1] not in inits:
            continue
        if inits[dq.input[0]].data_type != onnx.TensorProto.INT8:
            continue
        w_name = fp_nodes[n.name].input[1]
        if w_name not in fp_inits:
            continue
        w = G.to_array(fp_inits[w_name]).astype(np.float64)
        transposed = False
        if n.op_type == "Conv":
            if _int_attr(n, "group", 1) != 1 or w.shape[2:] != (1, 1):
                continue
            w = w.reshape(w.shape[0], -1)
        else:
            if _int_attr(n, "transA", 0):
                continue
            transposed = not _int_attr(n, "transB", 0)
            w = w.T if transposed else w
        scale = G.to_array(inits[dq.input[1]])
        if scale.size != w.shape[0]:
            continue  # per-tensor weights: the column updates assume one scale per output row
        out.append(_Dense(n.name, n.input[0], dq.input[0], dq.input[1], w, transposed))
    return out


def _hessian_rows(x: np.ndarray, conv: bool) -> torch.Tensor:
    x = np.moveaxis(x, 1, -1) if conv else x
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1]))


def gptq_round(w: np.ndarray, scale: np.ndarray, H: np.ndarray, qmin: int, qmax: int,
               percdamp: float = 0.01) -> np.ndarray:
    """Integers of ``W[N, K]`` on the grid ``scale[N] · [qmin, qmax]`` minimizing the output error under ``H``."""
    with single_thread(), torch.no_grad():
        W = torch.from_numpy(w).double().clone()
        Hs = torch.from_numpy(H).double().clone()
        dead = torch.diag(Hs) == 0
        Hs[dead, dead] = 1.0
        Hs += percdamp * torch.mean(torch.diag(Hs)) * torch.eye(Hs.shape[0], dtype=torch.float64)
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(Hs)), upper=True)
        s = torch.from_numpy(np.where(scale > 0, scale, 1.0)).double()
        Q = torch.zeros_like(W)
        for i in range(W.shape[1]):
            q = torch.clamp(torch.round(W[:, i] / s), qmin, qmax)
            Q[:, i] = q
            err = (W[:, i] - q * s) / Hinv[i, i]
            W[:, i + 1 :] -= err.unsqueeze(1) * Hinv[i, i + 1 :].unsqueeze(0)
        return Q.numpy()


def _output_error(w: np.ndarray, ints: np.ndarray, scale: np.ndarray, h: np.ndarray) -> float:
    """tr(E H Eᵀ) with E = W − ints·scale: the layer's output squared error on the calibration inputs."""
    e = w - ints * scale[:, None]
    return float(np.einsum("nk,kl,nl->", e, h, e))


def round_weights(
    fp32: onnx.ModelProto,
    quant: onnx.ModelProto,
    feeds: Sequence[dict[str, np.ndarray]],
    *,
    nodes: Collection[str] | None = None,
) -> dict[str, float]:
    """Re-round the int8 weights of ``quant``'s dense layers in place; node → relative output-error change
    (error with the new integers / error with round-to-nearest, on the calibration Hessian; < 1 = better)."""
    layers = [d for d in _dense_layers(fp32, quant) if nodes is None or d.node in nodes]
    if not layers or not feeds:
        return {}
    inputs = sorted({d.input for d in layers})
    run = tapped(quant, inputs)
    H: dict[str, torch.Tensor] = {}
    for feed in feeds:
        values = run(feed)
        with single_thread():
            for t in inputs:
                rows = _hessian_rows(values[t], values[t].ndim == 4).double()
                H[t] = H.get(t, torch.zeros(rows.shape[1], rows.shape[1], dtype=torch.float64)) + rows.T @ rows
    inits = G.initializers(quant)
    result: dict[str, float] = {}
    for d in layers:
        old = G.to_array(inits[d.quantized])
        scale = G.to_array(inits[d.scale]).astype(np.float64)
        lim = int(np.abs(old).max()) if old.size else 127
        qmax = 64 if lim <= 64 else 127
        h = H[d.input].numpy()
        q = gptq_round(d.fp32_weight, scale, h, -qmax, qmax)
        rtn = np.clip(np.round(d.fp32_weight / np.where(scale > 0, scale, 1.0)[:, None]), -qmax, qmax)
        before, after = _output_error(d.fp32_weight, rtn, scale, h), _output_error(d.fp32_weight, q, scale, h)
        result[d.node] = after / before if before > 0 else 1.0
        if after >= before:
            continue
        ints = q.T if d.transposed else q
        G.set_initializer(quant, d.quantized, ints.reshape(old.shape).astype(np.int8))
    return result

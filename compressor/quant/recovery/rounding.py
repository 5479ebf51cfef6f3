"""Output-aware rounding of the int8 weights of a QDQ graph (GPTQ / optimal-brain-quantizer updates).

Round-to-nearest minimizes each weight's own error; what matters is the layer's output error
‖(W − Ŵ)X‖² on the inputs the layer really receives. For every layer whose weight is an int8
``DequantizeLinear`` initializer with a per-output-channel scale, the Hessian H = XᵀX of its *dequantized*
input is accumulated on calibration feeds and the weight is re-rounded column by column on the same grid
(same scales, same integer range, e.g. 7-bit ``reduce_range`` weights), spreading each column's rounding
error over the columns not yet rounded (Frantar et al. 2022). The layers covered:

* dense: Gemm, MatMul (a Linear whose weight is ``[K, N]``), 1x1 Conv — one H over the input features;
* k×k Conv with ``group=1`` — one H over the unfolded patches (``Cin·kh·kw`` features);
* depthwise Conv (``group`` = input channels = output channels) — one ``kh·kw`` H *per channel*, since each
  output channel reads only its own input channel (the layers that lose the most on EfficientNet-Lite).

Each output channel keeps its new integers only where they lower its own output error on the calibration
Hessian. Only the integer weight values change, so onnxruntime's fusions and speed are exactly those of the
plain graph. Run it before :func:`~.bias_correction.correct_biases` (which then removes the mean shift that
remains).
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
class _Layer:
    node: str
    input: str  #: the dequantized activation the layer reads
    quantized: str  #: int8 weight initializer
    scale: str
    fp32_weight: np.ndarray  #: [N, K] (depthwise: [C, kh·kw])
    transposed: bool  #: stored as [K, N] (Gemm without transB, MatMul)
    kind: str  #: "dense" | "conv" (k×k, group 1) | "depthwise"
    kernel: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()


def _int_attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _ints_attr(node: onnx.NodeProto, name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    for a in node.attribute:
        if a.name == name:
            return tuple(int(v) for v in a.ints)
    return default


def _conv_layer(n: onnx.NodeProto, w: np.ndarray) -> tuple[str, np.ndarray, dict[str, tuple[int, ...]]] | None:
    """(kind, weight as rows, unfold geometry) of a 2-D Conv this module re-rounds; ``None`` otherwise."""
    if w.ndim != 4:
        return None
    group = _int_attr(n, "group", 1)
    auto_pad = next((a.s.decode() for a in n.attribute if a.name == "auto_pad"), "NOTSET")
    if auto_pad not in ("NOTSET", ""):
        return None
    kh, kw = w.shape[2:]
    geo = {"kernel": (kh, kw), "pads": _ints_attr(n, "pads", (0, 0, 0, 0)),
           "strides": _ints_attr(n, "strides", (1, 1)), "dilations": _ints_attr(n, "dilations", (1, 1))}
    if group == 1:
        if (kh, kw) == (1, 1) and geo["pads"] == (0, 0, 0, 0) and geo["strides"] == (1, 1):
            return "dense", w.reshape(w.shape[0], -1), {}
        return "conv", w.reshape(w.shape[0], -1), geo
    if w.shape[1] == 1 and group == w.shape[0]:
        return "depthwise", w.reshape(w.shape[0], -1), geo
    return None


def _layers(fp32: onnx.ModelProto, quant: onnx.ModelProto) -> list[_Layer]:
    inits, prod = G.initializers(quant), G.producers(quant)
    fp_nodes, fp_inits = {n.name: n for n in fp32.graph.node}, G.initializers(fp32)
    out = []
    for n in quant.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or n.name not in fp_nodes or n.input[1] not in prod:
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
        transposed, kind = False, "dense"
        geo: dict[str, tuple[int, ...]] = {}
        if n.op_type == "Conv":
            found = _conv_layer(n, w)
            if found is None:
                continue
            kind, w, geo = found
        elif n.op_type == "Gemm":
            if _int_attr(n, "transA", 0):
                continue
            transposed = not _int_attr(n, "transB", 0)
            w = w.T if transposed else w
        else:  # MatMul: x[..., K] @ W[K, N]
            if w.ndim != 2:
                continue
            transposed, w = True, w.T
        scale = G.to_array(inits[dq.input[1]])
        if scale.size != w.shape[0]:
            continue  # per-tensor weights: the column updates assume one scale per output row
        out.append(_Layer(n.name, n.input[0], dq.input[0], dq.input[1], w, transposed, kind, **geo))
    return out


def _patches(x: torch.Tensor, d: _Layer) -> torch.Tensor:
    """``[N, C·kh·kw, L]`` patches of an NCHW input, as the Conv reads them."""
    top, left, bottom, right = d.pads
    x = torch.nn.functional.pad(x, (left, right, top, bottom))
    return torch.nn.functional.unfold(x, d.kernel, dilation=d.dilations, stride=d.strides)


def _hessian(x: np.ndarray, d: _Layer) -> torch.Tensor:
    """This feed's XᵀX: ``[1, K, K]`` (shared by every output channel) or ``[C, k, k]`` (depthwise)."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    # float32 products (one feed's sums), accumulated over feeds in float64 by the caller
    if d.kind == "dense":
        rows = (t.movedim(1, -1) if t.ndim == 4 else t).reshape(-1, t.shape[1] if t.ndim == 4 else t.shape[-1])
        return (rows.T @ rows).double().unsqueeze(0)
    if d.kind == "conv":
        p = _patches(t, d)  # [N, K, L]
        return torch.einsum("nkl,njl->kj", p, p).double().unsqueeze(0)
    c, kk = d.fp32_weight.shape
    h = torch.zeros(c, kk, kk, dtype=torch.float64)
    for i in range(t.shape[0]):  # one sample at a time: the patches of an early layer are large
        p = _patches(t[i : i + 1], d).reshape(c, kk, -1)
        h += torch.einsum("ckl,cjl->ckj", p, p).double()
    return h


def _hessian_key(d: _Layer) -> tuple[object, ...]:
    """Layers with the same key share one Hessian (q / k / v projections of one input)."""
    if d.kind == "depthwise":
        return (d.node,)
    return (d.input, d.kind, d.kernel, d.pads, d.strides, d.dilations)


def gptq_round(w: np.ndarray, scale: np.ndarray, H: np.ndarray, qmin: int, qmax: int,
               percdamp: float = 0.01) -> np.ndarray:
    """Integers of ``W[N, K]`` on the grid ``scale[N] · [qmin, qmax]`` minimizing the output error under ``H``:
    ``[K, K]`` or ``[1, K, K]`` shared by every row, or ``[N, K, K]``, one per row (depthwise)."""
    with single_thread(), torch.no_grad():
        W = torch.from_numpy(w).double().clone()
        Hs = torch.from_numpy(H).double().clone()
        if Hs.ndim == 2:
            Hs = Hs.unsqueeze(0)
        diag = torch.diagonal(Hs, dim1=1, dim2=2)
        dead = diag == 0
        diag[dead] = 1.0
        mean = diag.mean(dim=1, keepdim=True)
        diag += percdamp * mean
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(Hs)), upper=True)
        s = torch.from_numpy(np.where(scale > 0, scale, 1.0)).double()
        Q = torch.zeros_like(W)
        for i in range(W.shape[1]):
            q = torch.clamp(torch.round(W[:, i] / s), qmin, qmax)
            Q[:, i] = q
            err = (W[:, i] - q * s) / Hinv[:, i, i]
            W[:, i + 1 :] -= err.unsqueeze(1) * Hinv[:, i, i + 1 :]
        return Q.numpy()


def _row_errors(w: np.ndarray, ints: np.ndarray, scale: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Per output row, eᵀHe with e = w − ints·scale: each channel's output squared error on the calibration."""
    e = w - ints * scale[:, None]
    if h.shape[0] == 1:
        return np.einsum("nk,kl,nl->n", e, h[0], e)
    return np.einsum("nk,nkl,nl->n", e, h, e)


def round_weights(
    fp32: onnx.ModelProto,
    quant: onnx.ModelProto,
    feeds: Sequence[dict[str, np.ndarray]],
    *,
    nodes: Collection[str] | None = None,
) -> dict[str, float]:
    """Re-round the int8 weights of ``quant``'s layers in place; node → relative output-error change
    (error with the integers kept / error with round-to-nearest, on the calibration Hessian; < 1 = better)."""
    layers = [d for d in _layers(fp32, quant) if nodes is None or d.node in nodes]
    if not layers or not feeds:
        return {}
    inputs = sorted({d.input for d in layers})
    run = tapped(quant, inputs)
    H: dict[tuple[object, ...], torch.Tensor] = {}
    first = {_hessian_key(d): d for d in reversed(layers)}
    for feed in feeds:
        values = run(feed)
        with single_thread(), torch.no_grad():
            for key, d in first.items():
                h = _hessian(values[d.input], d)
                H[key] = H[key] + h if key in H else h
    inits = G.initializers(quant)
    result: dict[str, float] = {}
    for d in layers:
        old = G.to_array(inits[d.quantized])
        scale = G.to_array(inits[d.scale]).astype(np.float64).reshape(-1)
        lim = int(np.abs(old).max()) if old.size else 127
        qmax = 64 if lim <= 64 else 127
        hess = H[_hessian_key(d)].numpy()
        q = gptq_round(d.fp32_weight, scale, hess, -qmax, qmax)
        rtn = (old.T if d.transposed else old).reshape(d.fp32_weight.shape).astype(np.float64)  # as quantized
        before = _row_errors(d.fp32_weight, rtn, scale, hess)
        after = _row_errors(d.fp32_weight, q, scale, hess)
        better = after < before
        chosen = np.where(better[:, None], q, rtn)
        total = float(before.sum())
        result[d.node] = float(np.minimum(before, after).sum()) / total if total > 0 else 1.0
        if not better.any():
            continue
        ints = chosen.T if d.transposed else chosen
        G.set_initializer(quant, d.quantized, ints.reshape(old.shape).astype(np.int8))
    return result

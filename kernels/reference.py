"""numpy references of the ``ai.devicefit`` ops: the same arithmetic, in the same order, as the C kernels.

Both ops quantize activations symmetrically to int8 and accumulate exactly in integers; the float parts
(activation scales, the epilogue, LowBit's per-group sum) are float32 operations in a fixed order that
every C path follows (the library is compiled with ``-ffp-contract=off``), so the kernels are expected to
match these references bit for bit.
"""

from __future__ import annotations

import numpy as np

from devicefit.kernels.pack import (
    LowBitWeights,
    Sparse24Weights,
    unpack_lowbit_codes,
    unpack_sparse24,
    zeros_or_default,
)

F32 = np.float32


def quantize_rows_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row (last axis): ``q = rint(x * (127 / amax))``, scale ``amax / 127`` (float32)."""
    x = np.asarray(x, F32)
    amax = np.abs(x).max(axis=-1, keepdims=True) if x.shape[-1] else np.zeros((*x.shape[:-1], 1), F32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, F32(127) / amax, F32(0)).astype(F32)
    q = np.clip(np.rint(x * inv), -127, 127).astype(np.int8)
    return q, (amax / F32(127)).astype(F32)[..., 0]


def sparse24_matmul(x: np.ndarray, w: Sparse24Weights, bias: np.ndarray | None = None) -> np.ndarray:
    """``Sparse24MatMul``: x[..., K] float32 -> y[..., N] float32."""
    x = np.asarray(x, F32)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[1] > w.kp or x2.shape[1] <= w.kp - 64:
        raise ValueError(f"x has K={x2.shape[1]}, the weights were packed for K={w.k} (Kp={w.kp})")
    xq, sx = quantize_rows_int8(x2)
    wd = np.zeros((w.n, w.kp), np.int8)
    wd[:, : w.k] = unpack_sparse24(w)
    acc = xq.astype(np.int64) @ wd[:, : x2.shape[1]].T.astype(np.int64)
    assert np.abs(acc).max(initial=0) < 2**31
    y = acc.astype(np.int32).astype(F32) * (sx[:, None] * w.scales[None, :])
    if bias is not None:
        y = y + np.asarray(bias, F32)[None, :]
    return y.reshape(*lead, w.n)


def lowbit_matmul(x: np.ndarray, w: LowBitWeights, bias: np.ndarray | None = None) -> np.ndarray:
    """``LowBitMatMul``: x[..., K] float32 -> y[..., N] float32 (activations int8 per group of G)."""
    x = np.asarray(x, F32)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    m, k = x2.shape
    if k > w.kp:
        raise ValueError(f"x has K={k} > Kp={w.kp} of the packed weights")
    g_size, ng = w.group_size, w.kp // w.group_size
    xp = np.zeros((m, w.kp), F32)
    xp[:, :k] = x2
    xq, xs = quantize_rows_int8(xp.reshape(m, ng, g_size))  # [m, ng, G], [m, ng]
    xsum = xq.astype(np.int64).sum(-1)  # [m, ng]
    q = unpack_lowbit_codes(w).reshape(w.n, ng, g_size).astype(np.int64)
    z = zeros_or_default(w).astype(np.int64)  # [n, ng]
    dots = np.einsum("mgk,ngk->mng", xq.astype(np.int64), q) - z[None, :, :] * xsum[:, None, :]
    acc = np.zeros((m, w.n), F32)
    for g in range(ng):  # in group order, float32, like every C path
        acc = acc + dots[:, :, g].astype(F32) * (w.scales[None, :, g] * xs[:, None, g])
    if bias is not None:
        acc = acc + np.asarray(bias, F32)[None, :]
    return acc.reshape(*lead, w.n)


def lowbit_matmul_float(x: np.ndarray, w: LowBitWeights, bias: np.ndarray | None = None) -> np.ndarray:
    """What the weights mean without activation quantization: ``x @ dequant(W).T`` in float64 (for
    stating the op's error against the float model, not for bitwise tests)."""
    from devicefit.kernels.pack import dequantize_lowbit

    y = np.asarray(x, np.float64) @ dequantize_lowbit(w).astype(np.float64).T
    return y + (0 if bias is None else np.asarray(bias, np.float64))

"""Packers: float / integer weights -> the tensors the ``ai.devicefit`` ops read (layouts in csrc/dfk.h).

Weights follow ``torch.nn.Linear``: ``W[N, K]`` (out features x in features); the ops compute ``x @ W.T``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: K is padded to a multiple of this for both ops (zero weights; the ops pad activations with zeros)
K_ALIGN = 64
GROUP_SIZES = (32, 64, 128, 256)
BITS = (2, 3)


def padded_k(k: int, group_size: int = K_ALIGN) -> int:
    """Smallest multiple of 64 and of ``group_size`` that is >= k."""
    step = int(np.lcm(K_ALIGN, group_size))
    return -(-k // step) * step


def _fields2_pack(fields: np.ndarray) -> np.ndarray:
    """[..., 32] values in 0..3 (slot order) -> [..., 8] bytes: slot q = 8j + t at bits 8t + 2j."""
    f = fields.astype(np.uint8).reshape(*fields.shape[:-1], 4, 8)  # [..., j, t]
    out = np.zeros((*fields.shape[:-1], 8), np.uint8)
    for j in range(4):
        out |= f[..., j, :] << np.uint8(2 * j)
    return out


def _fields2_unpack(words: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_fields2_pack`: [..., 8] bytes -> [..., 32] values."""
    parts = [(words >> np.uint8(2 * j)) & np.uint8(3) for j in range(4)]  # each [..., 8] = slots 8j..8j+7
    return np.concatenate(parts, axis=-1)


# ---------------------------------------------------------------- 2:4 sparse int8


@dataclass(frozen=True)
class Sparse24Weights:
    """Tensors of ``ai.devicefit::Sparse24MatMul`` for a weight ``W[N, K]``."""

    values: np.ndarray  # int8 [N, Kp/2]
    index: np.ndarray  # uint8 [N, Kp/8]
    scales: np.ndarray  # float32 [N]
    k: int

    @property
    def n(self) -> int:
        return int(self.values.shape[0])

    @property
    def kp(self) -> int:
        return int(self.values.shape[1]) * 2


def prune_24(w: np.ndarray) -> np.ndarray:
    """Magnitude 2:4 pruning along K: in each group of 4 consecutive inputs keep the 2 largest |w|."""
    w = np.asarray(w, np.float32)
    n, k = w.shape
    kp = -(-k // 4) * 4
    wp = np.zeros((n, kp), np.float32)
    wp[:, :k] = w
    g = wp.reshape(n, kp // 4, 4)
    order = np.argsort(-np.abs(g), axis=-1, kind="stable")
    mask = np.zeros_like(g, dtype=bool)
    np.put_along_axis(mask, order[..., :2], True, axis=-1)
    return (g * mask).reshape(n, kp)[:, :k]


def is_24_sparse(w: np.ndarray) -> bool:
    """True when every group of 4 consecutive inputs of every row has at most 2 non-zeros."""
    n, k = w.shape
    kp = -(-k // 4) * 4
    wp = np.zeros((n, kp), w.dtype)
    wp[:, :k] = w
    return bool(((wp.reshape(n, kp // 4, 4) != 0).sum(-1) <= 2).all())


def quantize_per_channel_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8: ``q = rint(w / s)``, ``s = max|w_n| / 127`` (1 for an all-zero row)."""
    w = np.asarray(w, np.float32)
    amax = np.abs(w).max(axis=1)
    scales = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    q = np.clip(np.rint(w / scales[:, None]), -127, 127).astype(np.int8)
    return q, scales


def pack_sparse24_int8(q: np.ndarray, scales: np.ndarray) -> Sparse24Weights:
    """Pack an int8 weight ``q[N, K]`` that is 2:4 sparse along K (values in [-127, 127]) + scales[N]."""
    q = np.asarray(q)
    if q.ndim != 2 or q.dtype != np.int8:
        raise ValueError(f"q must be a 2-D int8 array [N, K], got {q.dtype} {q.shape}")
    if (q == -128).any():
        raise ValueError("q must lie in [-127, 127] (symmetric int8); -128 found")
    if not is_24_sparse(q):
        raise ValueError("q is not 2:4 sparse along K (a group of 4 inputs has more than 2 non-zeros); "
                         "prune it first (devicefit.kernels.prune_24)")
    scales = np.asarray(scales, np.float32).reshape(-1)
    n, k = q.shape
    if scales.shape != (n,):
        raise ValueError(f"scales must have shape [N]={n}, got {scales.shape}")
    kp = padded_k(k)
    qp = np.zeros((n, kp), np.int8)
    qp[:, :k] = q
    g = qp.reshape(n, kp // 4, 4)
    nz = g != 0
    # positions of the 2 kept weights per group: the non-zeros first (in k order), padded with unused slots
    key = np.where(nz, 0, 1) * 4 + np.arange(4)
    pos = np.sort(np.argsort(key, axis=-1, kind="stable")[..., :2], axis=-1)  # [n, groups, 2], ascending
    vals = np.take_along_axis(g, pos, axis=-1).reshape(n, kp // 2)
    idx = pos.reshape(n, kp // 64, 32).astype(np.uint8)
    index = _fields2_pack(idx).reshape(n, kp // 8)
    return Sparse24Weights(values=vals, index=index, scales=scales, k=k)


def pack_sparse24(w: np.ndarray, *, prune: bool = True) -> Sparse24Weights:
    """Float ``W[N, K]`` -> 2:4 (magnitude-pruned when ``prune``) per-channel int8 tensors."""
    w = np.asarray(w, np.float32)
    if prune:
        w = prune_24(w)
    elif not is_24_sparse(w):
        raise ValueError("w is not 2:4 sparse along K; pass prune=True or prune it first")
    q, scales = quantize_per_channel_int8(w)
    return pack_sparse24_int8(q, scales)


def unpack_sparse24(p: Sparse24Weights) -> np.ndarray:
    """The dense int8 ``W[N, K]`` a :class:`Sparse24Weights` holds."""
    n, kp = p.n, p.kp
    pos = _fields2_unpack(p.index.reshape(n, kp // 64, 8)).reshape(n, kp // 4, 2).astype(np.int64)
    dense = np.zeros((n, kp // 4, 4), np.int8)
    np.put_along_axis(dense, pos, p.values.reshape(n, kp // 4, 2), axis=-1)
    return dense.reshape(n, kp)[:, : p.k]


# ---------------------------------------------------------------- 2/3-bit group-wise


@dataclass(frozen=True)
class LowBitWeights:
    """Tensors of ``ai.devicefit::LowBitMatMul`` for a weight ``W[N, K]``."""

    packed: np.ndarray  # uint8 [N, Kp*bits/8]
    scales: np.ndarray  # float32 [N, Kp/G]
    zeros: np.ndarray | None  # uint8 [N, Kp/G] or None (= 2^(bits-1))
    bits: int
    group_size: int
    k: int

    @property
    def n(self) -> int:
        return int(self.packed.shape[0])

    @property
    def kp(self) -> int:
        return int(self.packed.shape[1]) * 8 // self.bits


def _check_bits_group(bits: int, group_size: int) -> None:
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be one of {GROUP_SIZES}, got {group_size}")


def pack_lowbit(
    codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None = None, *, bits: int, group_size: int
) -> LowBitWeights:
    """Pack integer codes ``q[N, K]`` in [0, 2^bits) with per-group ``scales[N, ceil(K/G)]`` and optional
    integer ``zeros[N, ceil(K/G)]`` (GPTQ's layout after transposing its [K/G, N] tensors); dequantized
    weight ``w = (q - z) * s``. Groups past K (padding) get scale 0. (Checkpoints in AutoGPTQ's v1 format
    store ``z - 1`` in ``qzeros``: add 1 before packing. Activation-order ``g_idx`` is not supported: permute
    K first.)"""
    _check_bits_group(bits, group_size)
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be 2-D [N, K], got shape {codes.shape}")
    if codes.min(initial=0) < 0 or codes.max(initial=0) >= (1 << bits):
        raise ValueError(f"codes must lie in [0, {1 << bits}) for bits={bits}")
    n, k = codes.shape
    kp = padded_k(k, group_size)
    ng, ng_in = kp // group_size, -(-k // group_size)
    scales = np.asarray(scales, np.float32)
    if scales.shape != (n, ng_in):
        raise ValueError(f"scales must have shape [N, ceil(K/G)] = {(n, ng_in)}, got {scales.shape}")
    zdef = 1 << (bits - 1)
    cp = np.full((n, kp), zdef, np.uint8)
    cp[:, :k] = codes
    sp = np.zeros((n, ng), np.float32)
    sp[:, :ng_in] = scales
    zp = None
    if zeros is not None:
        zeros = np.asarray(zeros)
        if zeros.shape != (n, ng_in) or zeros.min(initial=0) < 0 or zeros.max(initial=0) > 255:
            raise ValueError(f"zeros must be integers in [0, 255] of shape {(n, ng_in)}, got {zeros.shape}")
        zp = np.full((n, ng), zdef, np.uint8)
        zp[:, :ng_in] = zeros
    if bits == 2:
        packed = _fields2_pack(cp.reshape(n, kp // 32, 32)).reshape(n, kp // 4)
    else:
        c = cp.reshape(n, kp // 64, 64)
        lo = _fields2_pack((c & 3).reshape(n, kp // 64, 2, 32)).reshape(n, kp // 64, 16)
        hib = ((c >> 2) & 1).reshape(n, kp // 64, 8, 8)  # [.., j, t]: k = 8j + t
        hi = np.zeros((n, kp // 64, 8), np.uint8)
        for j in range(8):
            hi |= hib[:, :, j, :] << np.uint8(j)
        packed = np.concatenate([lo, hi], axis=-1).reshape(n, kp * 3 // 8)
    return LowBitWeights(packed=np.ascontiguousarray(packed), scales=sp, zeros=zp, bits=bits,
                         group_size=group_size, k=k)


def unpack_lowbit_codes(p: LowBitWeights) -> np.ndarray:
    """The integer codes ``q[N, Kp]`` a :class:`LowBitWeights` holds (padding included)."""
    n, kp = p.n, p.kp
    if p.bits == 2:
        return _fields2_unpack(p.packed.reshape(n, kp // 32, 8)).reshape(n, kp)
    c = p.packed.reshape(n, kp // 64, 24)
    lo = _fields2_unpack(c[:, :, :16].reshape(n, kp // 64, 2, 8)).reshape(n, kp // 64, 64)
    hi = np.concatenate([(c[:, :, 16:] >> np.uint8(j)) & np.uint8(1) for j in range(8)], axis=-1)
    return (lo | (hi << np.uint8(2))).reshape(n, kp)


def zeros_or_default(p: LowBitWeights) -> np.ndarray:
    """The zero points, the default 2^(bits-1) filled in when absent (uint8 [N, Kp/G])."""
    if p.zeros is not None:
        return p.zeros
    return np.full(p.scales.shape, 1 << (p.bits - 1), np.uint8)


def dequantize_lowbit(p: LowBitWeights) -> np.ndarray:
    """float32 ``W[N, K]``: ``(q - z) * s`` per group."""
    q = unpack_lowbit_codes(p).astype(np.float32)
    z = np.repeat(zeros_or_default(p).astype(np.float32), p.group_size, axis=1)
    s = np.repeat(p.scales, p.group_size, axis=1)
    return ((q - z) * s)[:, : p.k]


def quantize_lowbit_rtn(
    w: np.ndarray, *, bits: int, group_size: int, symmetric: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round-to-nearest group-wise quantization of ``W[N, K]`` -> (codes, scales, zeros) for
    :func:`pack_lowbit` (GPTQ produces the same three tensors with better rounding)."""
    _check_bits_group(bits, group_size)
    w = np.asarray(w, np.float32)
    n, k = w.shape
    ng = -(-k // group_size)
    wp = np.zeros((n, ng * group_size), np.float32)
    wp[:, :k] = w
    g = wp.reshape(n, ng, group_size)
    qmax = (1 << bits) - 1
    if symmetric:
        z = np.full((n, ng), 1 << (bits - 1), np.float32)
        amax = np.abs(g).max(-1)
        s = np.where(amax > 0, amax / (1 << (bits - 1)), 1.0).astype(np.float32)
    else:
        lo, hi = np.minimum(g.min(-1), 0), np.maximum(g.max(-1), 0)
        s = np.where(hi > lo, (hi - lo) / qmax, 1.0).astype(np.float32)
        z = np.clip(np.rint(-lo / s), 0, qmax)
    q = np.clip(np.rint(g / s[..., None]) + z[..., None], 0, qmax).astype(np.uint8)
    return q.reshape(n, -1)[:, :k], s, z.astype(np.uint8)

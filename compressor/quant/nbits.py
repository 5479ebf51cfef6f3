"""Block-wise N-bit weights and onnxruntime's ``com.microsoft.MatMulNBits`` node.

Layout (onnxruntime contrib op spec; checked against its own ``MatMulNBitsQuantizer`` in the tests):
the logical weight is ``W[K, N]`` (``Y = A @ W``), quantized in blocks of ``block_size`` consecutive
input channels (along K) per output column n, ``k_blocks = ceil(K / block_size)`` (K zero-padded).

* ``B``: uint8 ``[N, k_blocks, blob_size]``, ``blob_size = block_size * bits / 8``; for 4 bits element
  2i of a block is the low nibble of byte i and element 2i+1 its high nibble.
* ``scales``: float ``[N * k_blocks]`` (row n's blocks contiguous).
* ``zero_points``: uint8 ``[N * ceil(k_blocks * bits / 8)]``, per row n packed like B (low nibble
  first, each row padded to a whole byte). Omitted = symmetric (zero point 2^(bits-1)).
* dequantized ``W[k, n] = (q[n, k] - zp[n, k // block_size]) * scale[n, k // block_size]``.

``accuracy_level=4`` lets onnxruntime quantize A to int8 per block and run integer dot products (the
fast path on x86/Arm CPUs); 0 computes in float from the dequantized weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from devicefit.compressor.quant import graph as G
from devicefit.compressor.quant.mapping import LayerNode

MS_DOMAIN = "com.microsoft"


@dataclass
class BlockQuant:
    """Integer codes ``q[N, K_pad]`` in ``[0, 2^bits)`` with per-(row, block) scales and zero points."""

    q: np.ndarray
    scales: np.ndarray  #: [N, k_blocks] float32
    zero_points: np.ndarray  #: [N, k_blocks] uint8
    bits: int
    block_size: int
    K: int

    @property
    def N(self) -> int:
        return int(self.q.shape[0])

    @property
    def k_blocks(self) -> int:
        return int(self.scales.shape[1])

    def dequantize(self) -> np.ndarray:
        """The dequantized weight ``[K, N]`` float32 (numpy reference of the kernel)."""
        s = np.repeat(self.scales, self.block_size, axis=1)
        z = np.repeat(self.zero_points.astype(np.float32), self.block_size, axis=1)
        w = (self.q.astype(np.float32) - z) * s
        return np.ascontiguousarray(w[:, : self.K].T)


def block_params(w_blocks: np.ndarray, bits: int, *, symmetric: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) per block of ``w_blocks[..., block]`` (min/max, zero kept in range)."""
    qmax = (1 << bits) - 1
    lo = np.minimum(w_blocks.min(axis=-1), 0.0)
    hi = np.maximum(w_blocks.max(axis=-1), 0.0)
    if symmetric:
        m = np.maximum(np.abs(lo), np.abs(hi))
        scale = m / ((qmax + 1) // 2 - 1)  # [-(2^(b-1)), 2^(b-1)-1] * scale covers ±m
        zp = np.full(scale.shape, (qmax + 1) // 2, dtype=np.float32)
    else:
        scale = (hi - lo) / qmax
        zp = np.round(-lo / np.where(scale == 0, 1, scale))
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    return scale, np.clip(zp, 0, qmax).astype(np.float32)


def quantize_codes(w: np.ndarray, scale: np.ndarray, zp: np.ndarray, bits: int) -> np.ndarray:
    return np.clip(np.round(w / scale + zp), 0, (1 << bits) - 1)


def _pad_k(w_nk: np.ndarray, block_size: int) -> np.ndarray:
    K = w_nk.shape[1]
    pad = (-K) % block_size
    return np.pad(w_nk, ((0, 0), (0, pad))) if pad else w_nk


def rtn(w_kn: np.ndarray, *, bits: int = 4, block_size: int = 32, symmetric: bool = False) -> BlockQuant:
    """Round-to-nearest block quantization of ``W[K, N]``."""
    K, N = w_kn.shape
    wp = _pad_k(np.ascontiguousarray(w_kn.T, dtype=np.float32), block_size)
    blocks = wp.reshape(N, -1, block_size)
    scale, zp = block_params(blocks, bits, symmetric=symmetric)
    q = quantize_codes(blocks, scale[..., None], zp[..., None], bits).reshape(N, -1)
    return BlockQuant(q.astype(np.uint8), scale, zp.astype(np.uint8), bits, block_size, K)


def _pack_rows(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack ``codes[..., n]`` (values < 2^bits) along the last axis, low bits first."""
    if bits == 8:
        return codes.astype(np.uint8)
    per = 8 // bits
    pad = (-codes.shape[-1]) % per
    if pad:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], pad), codes.dtype)], axis=-1)
    c = codes.astype(np.uint8).reshape(*codes.shape[:-1], -1, per)
    out = np.zeros(c.shape[:-1], np.uint8)
    for j in range(per):
        out |= (c[..., j] << (bits * j)).astype(np.uint8)
    return out


def pack(bq: BlockQuant) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B [N, k_blocks, blob], scales [N*k_blocks], zero_points [N*ceil(k_blocks*bits/8)])."""
    if bq.bits not in (2, 4, 8):
        raise ValueError(f"bits={bq.bits}: MatMulNBits packing supports 2, 4, 8")
    blocks = bq.q.reshape(bq.N, bq.k_blocks, bq.block_size)
    B = _pack_rows(blocks, bq.bits)
    scales = np.ascontiguousarray(bq.scales.reshape(-1), dtype=np.float32)
    zp = _pack_rows(bq.zero_points, bq.bits).reshape(-1)
    return np.ascontiguousarray(B), scales, np.ascontiguousarray(zp)


def unpack(B: np.ndarray, zp: np.ndarray, *, bits: int, K: int, N: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`pack` for codes and zero points (tests and inspection)."""
    per = 8 // bits
    mask = (1 << bits) - 1
    kb = B.shape[1]
    codes = np.stack([(B >> (bits * j)) & mask for j in range(per)], axis=-1).reshape(N, kb, -1)
    zrow = zp.reshape(N, -1)
    z = np.stack([(zrow >> (bits * j)) & mask for j in range(per)], axis=-1).reshape(N, -1)[:, :kb]
    return codes.reshape(N, -1), z


def write_matmulnbits(
    model: onnx.ModelProto, ln: LayerNode, bq: BlockQuant, *, accuracy_level: int = 0, pre_scale: np.ndarray | None = None
) -> str:
    """Replace the layer's MatMul/Gemm (and its bias Add) by one ``MatMulNBits``; returns the new node name.

    ``pre_scale`` (AWQ) multiplies the input per channel first (an inserted ``Mul``)."""
    if ln.op_type == "Gemm":
        nb = G.node_by_name(model)[ln.node]
        if G.attr(nb, "alpha", 1.0) != 1.0 or G.attr(nb, "beta", 1.0) != 1.0 or G.attr(nb, "transA", 0):
            raise ValueError(f"{ln.layer}: Gemm with alpha/beta/transA is not supported for MatMulNBits")
    nodes = G.node_by_name(model)
    node = nodes[ln.node]
    B, scales, zp = pack(bq)
    base = f"{ln.layer}.weight_q{bq.bits}"
    G.set_initializer(model, f"{base}", B)
    G.set_initializer(model, f"{base}_scales", scales)
    G.set_initializer(model, f"{base}_zero_points", zp)
    a = ln.input
    new_nodes = []
    if pre_scale is not None:
        G.set_initializer(model, f"{base}_input_scale", pre_scale.astype(np.float32))
        a_scaled = f"{ln.layer}.awq_scaled_input"
        new_nodes.append(onnx.helper.make_node("Mul", [a, f"{base}_input_scale"], [a_scaled], name=f"{ln.layer}.awq_mul"))
        a = a_scaled
    inputs = [a, base, f"{base}_scales", f"{base}_zero_points"]
    if ln.bias is not None:
        inputs += ["", ln.bias]
    attrs = {"K": bq.K, "N": bq.N, "bits": bq.bits, "block_size": bq.block_size}
    if accuracy_level:
        attrs["accuracy_level"] = accuracy_level
    name = f"{ln.node}_MatMulNBits{bq.bits}"
    mnb = onnx.helper.make_node("MatMulNBits", inputs, [ln.output], name=name, domain=MS_DOMAIN)
    mnb.attribute.extend(onnx.helper.make_attribute(k, v) for k, v in attrs.items())
    new_nodes.append(mnb)
    G.replace_node(model, node, new_nodes)
    if ln.bias_add is not None:
        model.graph.node.remove(G.node_by_name(model)[ln.bias_add])
    G.ensure_opset(model, MS_DOMAIN, 1)
    G.remove_dead_nodes(model)
    return name


def block_size_for(K: int, wanted: int) -> int:
    """``wanted`` unless K is smaller: then the largest power of two ≥ 16 not above K (or 16)."""
    bs = wanted
    while bs > 16 and bs > K:
        bs //= 2
    return bs

"""GPTQ (Frantar et al., 2022) for one Linear layer, producing MatMulNBits block codes.

Given the layer's calibration inputs ``X`` (rows = tokens), ``H = 2/n · XᵀX`` is the Hessian of the
layer-output squared error. Columns (input channels) are quantized left to right; after each column the
quantization error is spread over the not-yet-quantized columns with the inverse-Hessian row (optimal
brain surgeon update), processed in lazy batches of ``block`` columns. Scales / zero points are set per
group of ``group_size`` columns from the *updated* weights when the group starts (asymmetric min/max,
like RTN), which is exactly MatMulNBits' block layout. No activation reordering (act-order would need
``g_idx``), and each layer sees fp32 inputs (layers are not quantized sequentially).

The onnxruntime path (``MatMulNBitsQuantizer`` with ``GPTQWeightOnlyQuantConfig``) needs Intel
neural-compressor, which is not a dependency; this is a self-contained torch implementation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from devicefit.compressor.quant.nbits import BlockQuant, block_params


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread: the column loop is many tiny ops, which multi-threading only slows
    (measured 0.7 s vs 5.3 s for a 1536x384 layer on a busy 2-core host)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class HessianAccumulator:
    """Running ``2/n · XᵀX`` over batches of inputs ``[..., K]`` (float64)."""

    def __init__(self, k: int) -> None:
        self.H = torch.zeros(k, k, dtype=torch.float64)
        self.n = 0

    def add(self, x: np.ndarray) -> None:
        x2 = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(-1, self.H.shape[0])
        m = x2.shape[0]
        if m == 0:
            return
        self.H *= self.n / (self.n + m)
        self.n += m
        with single_thread():
            self.H += (x2.T @ x2).double() * (2.0 / self.n)

    def hessian(self) -> np.ndarray:
        return self.H.numpy()


def gptq(
    w_kn: np.ndarray,
    H: np.ndarray,
    *,
    bits: int = 4,
    group_size: int = 32,
    percdamp: float = 0.01,
    block: int = 128,
) -> BlockQuant:
    """Quantize ``W[K, N]`` with GPTQ given the input Hessian ``H[K, K]``."""
    with single_thread(), torch.no_grad():
        return _gptq(w_kn, H, bits=bits, group_size=group_size, percdamp=percdamp, block=block)


def _gptq(w_kn: np.ndarray, H: np.ndarray, *, bits: int, group_size: int, percdamp: float, block: int) -> BlockQuant:
    K, N = w_kn.shape
    pad = (-K) % group_size
    Kp = K + pad
    W = torch.zeros(N, Kp, dtype=torch.float64)
    W[:, :K] = torch.from_numpy(np.ascontiguousarray(w_kn.T)).double()
    Hs = torch.zeros(Kp, Kp, dtype=torch.float64)
    Hs[:K, :K] = torch.from_numpy(H).double()
    dead = torch.diag(Hs) == 0
    Hs[dead, dead] = 1.0
    W[:, dead] = 0.0
    damp = percdamp * torch.mean(torch.diag(Hs))
    Hs += damp * torch.eye(Kp, dtype=torch.float64)
    Hinv = _inverse_cholesky_upper(Hs).float()
    W = W.float()

    qmax = (1 << bits) - 1
    Q = torch.zeros(N, Kp, dtype=torch.float32)
    n_groups = Kp // group_size
    scales = torch.zeros(N, n_groups, dtype=torch.float32)
    zeros = torch.zeros(N, n_groups, dtype=torch.float32)
    block = max(block, group_size) // group_size * group_size
    for i1 in range(0, Kp, block):
        i2 = min(i1 + block, Kp)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % group_size == 0:
                g = col // group_size
                s, z = block_params(W1[:, i : i + group_size].numpy(), bits)
                scales[:, g] = torch.from_numpy(s)
                zeros[:, g] = torch.from_numpy(z)
            g = col // group_size
            w = W1[:, i]
            q = torch.clamp(torch.round(w / scales[:, g]) + zeros[:, g], 0, qmax)
            Q[:, col] = q
            dq = (q - zeros[:, g]) * scales[:, g]
            err = (w - dq) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return BlockQuant(
        Q.numpy().astype(np.uint8),
        scales.numpy().astype(np.float32),
        zeros.numpy().astype(np.uint8),
        bits,
        group_size,
        K,
    )


def _inverse_cholesky_upper(H: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor of ``H⁻¹`` (adds damping until ``H`` is positive definite)."""
    eye = torch.eye(H.shape[0], dtype=H.dtype)
    extra = 0.0
    for _ in range(6):
        try:
            L = torch.linalg.cholesky(H + extra * eye)
            # H⁻¹ = L⁻ᵀ L⁻¹ (cholesky_inverse is pathologically slow in some CPU builds)
            Linv = torch.linalg.solve_triangular(L, eye, upper=False)
            Hinv = Linv.T @ Linv
            return torch.linalg.cholesky(Hinv, upper=True)
        except RuntimeError:
            extra = max(extra * 10, 1e-6 * float(torch.mean(torch.diag(H))))
    raise RuntimeError("GPTQ: Hessian is not positive definite even after damping")

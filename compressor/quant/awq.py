"""AWQ-style activation-aware scaling (Lin et al., 2023) for one Linear layer, then RTN.

Input channels that see large activations matter more. Scale weight rows (input channels) by
``s = mean|x|^α`` (normalized), quantize ``W·diag(s)`` with RTN, and divide the input by ``s`` at run
time (an inserted ``Mul`` before ``MatMulNBits``). ``α`` is searched on a grid to minimize the layer-output
error ``‖X W − (X/s) Q(diag(s) W)‖²`` on a calibration sample. (The paper's weight-clipping search and
folding of ``1/s`` into the previous op are not done here.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from devicefit.compressor.quant.nbits import BlockQuant, rtn

GRID = tuple(i / 20 for i in range(21))


class InputStats:
    """Per-channel mean |x| and mean x, and a bounded row sample of the layer input ``[..., K]``."""

    def __init__(self, k: int, *, max_rows: int = 2048, seed: int = 0) -> None:
        self.abs_sum = np.zeros(k, np.float64)
        self.sum = np.zeros(k, np.float64)
        self.n = 0
        self.max_rows = max_rows
        self.sample: list[np.ndarray] = []
        self._rows = 0
        self._rng = np.random.default_rng(seed)

    def add(self, x: np.ndarray) -> None:
        x2 = np.asarray(x, np.float32).reshape(-1, self.abs_sum.shape[0])
        self.abs_sum += np.abs(x2).sum(axis=0)
        self.sum += x2.sum(axis=0, dtype=np.float64)
        self.n += x2.shape[0]
        if self._rows < self.max_rows:
            take = min(self.max_rows - self._rows, x2.shape[0])
            idx = self._rng.choice(x2.shape[0], size=take, replace=False)
            self.sample.append(x2[idx])
            self._rows += take

    @property
    def mean_abs(self) -> np.ndarray:
        return (self.abs_sum / max(self.n, 1)).astype(np.float32)

    @property
    def mean(self) -> np.ndarray:
        """The per-channel mean of the input (zeros before any row was added)."""
        return (self.sum / max(self.n, 1)).astype(np.float32)

    def rows(self) -> np.ndarray:
        return np.concatenate(self.sample) if self.sample else np.zeros((0, self.abs_sum.shape[0]), np.float32)


@dataclass
class AwqResult:
    quant: BlockQuant  #: codes of ``diag(s) W``
    input_scale: np.ndarray  #: ``1/s``: multiply the input by this before MatMulNBits
    alpha: float
    error: float
    rtn_error: float


def awq(w_kn: np.ndarray, stats: InputStats, *, bits: int = 4, group_size: int = 32) -> AwqResult:
    """Search α, return the scaled RTN codes and the input scale."""
    X = stats.rows().astype(np.float64)
    ref = X @ w_kn.astype(np.float64)
    mean_abs = np.maximum(stats.mean_abs.astype(np.float64), 1e-8)
    best: AwqResult | None = None
    rtn_err = 0.0
    for alpha in GRID:
        s = mean_abs**alpha
        s = s / np.sqrt(s.max() * s.min())
        s = np.clip(s, 1e-4, 1e4)
        bq = rtn((w_kn * s[:, None]).astype(np.float32), bits=bits, block_size=group_size)
        w_eff = bq.dequantize().astype(np.float64) / s[:, None]
        err = float(np.mean((X @ w_eff - ref) ** 2))
        if alpha == 0.0:
            rtn_err = err
        if best is None or err < best.error:
            best = AwqResult(bq, (1.0 / s).astype(np.float32), alpha, err, 0.0)
    assert best is not None
    best.rtn_error = rtn_err
    return best

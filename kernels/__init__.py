"""devicefit.kernels: devicefit's own integer kernels, as an onnxruntime custom-op library.

Ops (domain ``ai.devicefit``): ``Sparse24MatMul`` (2:4 semi-structured sparse int8 weights) and
``LowBitMatMul`` (2- and 3-bit group-wise weights, GPTQ-compatible). The C library is built from the sources
in ``csrc/`` with the system compiler on first use (or ``python -m devicefit.kernels build``); SIMD paths:
AVX-512 VNNI and AVX2 (x86-64), NEON dot-product (aarch64) and portable scalar, chosen at run time from the
CPU's features (override: ``DEVICEFIT_KERNELS_ISA=scalar|avx2|avx512vnni|neon_dot``; the AVX-512 path unpacks 2/3-bit
codes with VBMI where the CPU has it, ``DEVICEFIT_KERNELS_NO_VBMI=1`` turns that off). Every op has a numpy reference
(:mod:`~devicefit.kernels.reference`) and a lowering to standard ONNX ops (:mod:`~devicefit.kernels.lowering`).
Importing this package needs only numpy.

Modules: ``builder`` (compile / cache / load), ``pack`` (weights -> op tensors; layouts in ``csrc/dfk.h``),
``reference`` (numpy), ``ops`` (ONNX node builders, session options), ``lowering`` (-> standard ops),
``rewrite`` (MatMul nodes -> the ops), ``csrc/`` (C: ``ort_abi.h`` declares the onnxruntime C ABI subset,
``ort_ops.c`` the custom ops, ``dispatch.c`` ISA selection and the shared quantize / epilogue, ``kern_*.c``
the paths, ``test_driver.c`` the qemu driver).
"""

from __future__ import annotations

from devicefit.kernels.builder import KernelBuildError, build, cache_dir, library_path
from devicefit.kernels.pack import (
    LowBitWeights,
    Sparse24Weights,
    dequantize_lowbit,
    pack_lowbit,
    pack_sparse24,
    pack_sparse24_int8,
    prune_24,
    quantize_lowbit_rtn,
    unpack_sparse24,
)


def available() -> str | None:
    """The SIMD path the ops use on this machine now (``"avx512vnni"``, ``"avx2"``, ``"neon_dot"``, ``"scalar"``), or None
    when the library cannot be built or loaded here (no compiler, build error)."""
    try:
        from devicefit.kernels.builder import load

        name = load().dfk_isa_name()
    except (KernelBuildError, OSError):
        return None
    return name.decode() if name else None


def supported_isas() -> list[str]:
    """Every path this CPU and build can run, best first (empty when the library is unavailable)."""
    try:
        from devicefit.kernels.builder import load

        return [s for s in load().dfk_isa_list().decode().split(",") if s]
    except (KernelBuildError, OSError):
        return []


__all__ = [
    "KernelBuildError",
    "LowBitWeights",
    "Sparse24Weights",
    "available",
    "build",
    "cache_dir",
    "dequantize_lowbit",
    "library_path",
    "pack_lowbit",
    "pack_sparse24",
    "pack_sparse24_int8",
    "prune_24",
    "quantize_lowbit_rtn",
    "supported_isas",
    "unpack_sparse24",
]

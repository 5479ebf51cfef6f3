"""The C kernels, cross-compiled for aarch64 (Debian's gcc-aarch64-linux-gnu) and run under qemu-user,
equal the numpy reference bit for bit on the NEON dot-product path and the scalar path. The same driver
also runs natively (every path of this CPU, without onnxruntime)."""

from __future__ import annotations

import platform
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from devicefit.kernels import pack, reference
from devicefit.kernels.builder import Toolchain, build_test_driver, find_compiler, normalize_arch

INSTALL = "apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user (or run .ci/install-system-deps.sh)"


def write_cases(path: Path, seed: int = 0) -> int:
    """Random Sparse24 / LowBit cases with their numpy-reference outputs, in the driver's format."""
    rng = np.random.default_rng(seed)
    chunks: list[bytes] = []
    count = 0

    def head(op: int, m: int, k: int, kp: int, n: int, bits: int, g: int, zeros: bool, bias: bool) -> bytes:
        return struct.pack("<I6qII", op, m, k, kp, n, bits, g, int(zeros), int(bias))

    for m, k, n in [(1, 64, 8), (1, 384, 36), (3, 200, 13), (8, 1536, 20), (2, 130, 9), (5, 768, 33)]:
        x = rng.standard_normal((m, k)).astype(np.float32)
        x[rng.random(x.shape) < 0.02] *= 40
        bias = rng.standard_normal(n).astype(np.float32)
        w = pack.pack_sparse24(rng.standard_normal((n, k)).astype(np.float32))
        for b in (None, bias):
            y = reference.sparse24_matmul(x, w, b)
            chunks += [head(0, m, k, w.kp, n, 0, 0, False, b is not None), x.tobytes(), w.values.tobytes(),
                       w.index.tobytes(), w.scales.tobytes(), b.tobytes() if b is not None else b"", y.tobytes()]
            count += 1
        for bits in (2, 3):
            for g in (32, 64, 128, 256):
                q, s, z = pack.quantize_lowbit_rtn(rng.standard_normal((n, k)).astype(np.float32), bits=bits,
                                                   group_size=g)
                for zeros, b in ((z, None), (None, bias)):
                    lw = pack.pack_lowbit(q, s, zeros, bits=bits, group_size=g)
                    y = reference.lowbit_matmul(x, lw, b)
                    chunks += [head(1, m, k, lw.kp, n, bits, g, zeros is not None, b is not None), x.tobytes(),
                               lw.packed.tobytes(), lw.scales.tobytes(),
                               lw.zeros.tobytes() if lw.zeros is not None else b"",
                               b.tobytes() if b is not None else b"", y.tobytes()]
                    count += 1
    path.write_bytes(b"DFKT" + struct.pack("<I", count) + b"".join(chunks))
    return count


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_native_driver_matches_reference(tmp_path: Path) -> None:
    try:
        cc = find_compiler()
    except Exception as exc:
        pytest.skip(str(exc))
    drv = build_test_driver(Toolchain(cc, normalize_arch(platform.machine())), tmp_path / "driver")
    n = write_cases(tmp_path / "cases.bin")
    res = _run([str(drv), str(tmp_path / "cases.bin")])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "scalar" in res.stdout.splitlines()[0]
    assert ", 0 failures" in res.stdout and n > 50


def test_aarch64_neon_dotprod_under_qemu(tmp_path: Path) -> None:
    cross, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64") or shutil.which(
        "qemu-aarch64-static")
    if not cross or not qemu:
        pytest.skip(f"needs aarch64-linux-gnu-gcc and qemu-aarch64: {INSTALL}")
    drv = build_test_driver(Toolchain(cross, "aarch64"), tmp_path / "driver-aarch64", static=True)
    n = write_cases(tmp_path / "cases.bin")
    res = _run([qemu, str(drv), str(tmp_path / "cases.bin")])
    assert res.returncode == 0, res.stdout + res.stderr
    first = res.stdout.splitlines()[0]
    assert first == "isas: neon_dot,scalar", first  # qemu's default CPU has the dot-product extension
    assert f"{2 * n} runs, 0 failures" in res.stdout, res.stdout

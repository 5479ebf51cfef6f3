"""Integer formats per target CPU: activation signedness and ``reduce_range`` from the profile's ISA.

The rule (onnxruntime's "Choosing parameters for CPU inference" and its quantization FAQ):

* **x86-64 with VNNI** (``avx512_vnni``, ``avx_vnni`` or ``amx``): activations **uint8**, weights
  **int8** (U8S8), ``reduce_range=False``. VNNI's ``vpdpbusd`` accumulates u8×s8 products in int32
  without the intermediate int16 saturation.
* **x86-64 without VNNI** (AVX2 / AVX-512F only): U8S8 runs through ``vpmaddubsw``, which adds pairs of
  u8×s8 products into int16 and can saturate. We keep U8S8 (the fast kernels) and set
  ``reduce_range=True`` (7-bit weights), which removes the saturation at a small accuracy cost.
* **aarch64 with dotprod / i8mm**: ``sdot``/``udot`` have no saturation issue; QDQ graphs are
  quantized S8S8 (onnxruntime's recommended default for Arm), no ``reduce_range``.
* **Arm without dotprod, armv7, riscv, unknown**: U8S8 without ``reduce_range`` (onnxruntime's
  widely supported combination; the NEON kernels widen to int16/32 without saturating).

Dynamic quantization always quantizes activations to uint8 (``DynamicQuantizeLinear`` is u8 only);
the rule then only decides ``reduce_range``. Without a profile the host CPU is read from
``/proc/cpuinfo``. Note that the float-fallback check runs on the *host* onnxruntime: where the target is
another architecture (an S8S8 graph for Arm checked on x86) the report says what the host fused.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VNNI_X86 = frozenset({"avx512_vnni", "avx_vnni", "amx"})
DOT_ARM = frozenset({"dotprod", "i8mm"})


@dataclass(frozen=True)
class IntFormat:
    """Integer formats chosen for one target."""

    activation: str  #: "uint8" | "int8" (static QDQ activations)
    weight: str  #: "int8"
    reduce_range: bool
    reason: str

    def ort_types(self) -> tuple[Any, Any]:
        """(activation QuantType, weight QuantType) for onnxruntime's quantizers."""
        from onnxruntime.quantization import QuantType

        act = QuantType.QUInt8 if self.activation == "uint8" else QuantType.QInt8
        return act, QuantType.QInt8


def _host() -> tuple[str, tuple[str, ...]]:
    arch = platform.machine().lower()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip().lower()
            if key in ("flags", "features"):
                flags.update(line.split(":", 1)[1].split())
    except OSError:
        pass
    if "asimddp" in flags:
        flags.add("dotprod")
    if "amx_int8" in flags or "amx_tile" in flags:
        flags.add("amx")
    return arch, tuple(sorted(flags))


def target_isa(profile: Any | None) -> tuple[str, tuple[str, ...]]:
    """(arch, isa flags) of the profile, or of this host when ``profile`` is None."""
    if profile is None:
        return _host()
    cpu = profile.cpu
    return str(cpu.arch), tuple(cpu.isa)


def int_format(profile: Any | None = None) -> IntFormat:
    """The activation / weight formats for ``profile`` (a DeviceProfile) or this host."""
    arch, isa = target_isa(profile)
    flags = set(isa)
    who = f"{getattr(profile, 'id', 'host')} ({arch})"
    if arch == "x86_64":
        if flags & VNNI_X86:
            return IntFormat("uint8", "int8", False, f"{who}: VNNI present → U8S8, full range")
        return IntFormat("uint8", "int8", True, f"{who}: no VNNI → U8S8 with reduce_range (vpmaddubsw saturation)")
    if arch == "aarch64" and flags & DOT_ARM:
        return IntFormat("int8", "int8", False, f"{who}: dotprod → S8S8")
    return IntFormat("uint8", "int8", False, f"{who}: U8S8 (portable default)")

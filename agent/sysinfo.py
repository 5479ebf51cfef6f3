"""What this machine is: cores, memory, ISA features, storage, runtimes (runs on the device; no torch).

Only the standard library, plus ``psutil`` when installed (the agent extra has it). Runtime versions are
read from package metadata, so probing never imports a runtime.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

#: /proc/cpuinfo ``flags`` (x86) / ``Features`` (Arm) / RISC-V ``isa`` name -> devicefit's ISA name
_FLAG_MAP: dict[str, str] = {
    # x86
    "sse4_2": "sse4_2",
    "avx": "avx",
    "fma": "fma",
    "f16c": "f16c",
    "avx2": "avx2",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512_vnni": "avx512_vnni",
    "avx512vnni": "avx512_vnni",
    "avx512_bf16": "avx512_bf16",
    "avx_vnni": "avx_vnni",
    "avxvnni": "avx_vnni",
    "amx_int8": "amx",
    "amx_tile": "amx",
    # Arm (aarch64 Features; armv7 reports "neon")
    "asimd": "neon",
    "neon": "neon",
    "asimddp": "dotprod",
    "i8mm": "i8mm",
    "asimdhp": "fp16",
    "bf16": "bf16",
    "sve": "sve",
    "sve2": "sve2",
    # RISC-V vector extension (derived from the ``isa`` string)
    "rvv": "rvv",
}
#: macOS sysctl hw.optional.* -> devicefit name (Apple silicon)
_DARWIN_SYSCTL: dict[str, str] = {
    "hw.optional.neon": "neon",
    "hw.optional.arm.FEAT_DotProd": "dotprod",
    "hw.optional.arm.FEAT_I8MM": "i8mm",
    "hw.optional.arm.FEAT_FP16": "fp16",
    "hw.optional.arm.FEAT_BF16": "bf16",
    "hw.optional.avx2_0": "avx2",
    "hw.optional.avx512f": "avx512f",
}
_ARCH_MAP = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64", "armv7l": "armv7l",
             "armv8l": "armv7l", "riscv64": "riscv64"}
_ISA_ORDER = ("neon", "dotprod", "i8mm", "fp16", "bf16", "sve", "sve2", "sse4_2", "avx", "fma", "f16c", "avx2",
              "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx", "rvv")


def normalize_arch(machine: str) -> str:
    return _ARCH_MAP.get(machine.lower(), machine.lower())


def normalize_isa(flags: list[str] | set[str] | tuple[str, ...], arch: str = "") -> list[str]:
    """Map raw CPU flags to devicefit's names (``asimddp`` -> ``dotprod``, ``amx_int8`` -> ``amx``, …)."""
    out = {_FLAG_MAP[f.lower()] for f in flags if f.lower() in _FLAG_MAP}
    if arch == "aarch64":
        out.add("neon")  # Advanced SIMD is mandatory on AArch64
    return [f for f in _ISA_ORDER if f in out]


def _read_cpuinfo() -> dict[str, str]:
    """First processor block of /proc/cpuinfo (plus machine-wide keys Arm puts after the blocks)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info.setdefault(key.strip().lower(), value.strip())
    return info


def _cpu_flags(cpuinfo: dict[str, str], arch: str) -> list[str]:
    raw = cpuinfo.get("flags") or cpuinfo.get("features") or ""
    flags = raw.split()
    if arch == "riscv64":
        base = cpuinfo.get("isa", "").split("_")[0]  # e.g. rv64imafdcv
        if "v" in base[4:]:
            flags.append("rvv")
    found = normalize_isa(flags, arch)
    if sys.platform == "darwin":
        found = [f for f in _ISA_ORDER if f in {*found, *_darwin_flags()}]
    return found


def _darwin_flags() -> list[str]:  # pragma: no cover - macOS only
    out = []
    for key, name in _DARWIN_SYSCTL.items():
        try:
            res = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=2)
        except (OSError, subprocess.SubprocessError):
            continue
        if res.returncode == 0 and res.stdout.strip() == "1":
            out.append(name)
    return out


def _cpu_model(cpuinfo: dict[str, str]) -> str:
    for key in ("model name", "hardware", "cpu model", "uarch", "processor"):
        value = cpuinfo.get(key, "")
        if value and not value.isdigit():
            return value
    if "cpu part" in cpuinfo:  # Arm: implementer/part ids only
        return f"Arm implementer {cpuinfo.get('cpu implementer', '?')} part {cpuinfo['cpu part']}"
    return platform.processor() or platform.machine()


def _max_ghz(cpuinfo: dict[str, str]) -> float:
    """Highest max frequency of any core in GHz (0.0 when the machine does not say, as in many VMs)."""
    best = 0.0
    for f in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/cpuinfo_max_freq"):
        try:
            best = max(best, int(f.read_text().strip()) / 1e6)
        except (OSError, ValueError):
            continue
    if best == 0.0:
        try:
            import psutil

            freq = psutil.cpu_freq()
            if freq is not None:
                best = (freq.max or freq.current or 0.0) / 1000.0
        except Exception:  # psutil missing or the platform has no frequency API
            pass
    if best == 0.0 and cpuinfo.get("cpu mhz"):  # nominal clock of VMs without cpufreq
        with contextlib.suppress(ValueError):
            best = float(cpuinfo["cpu mhz"]) / 1000.0
    return round(best, 3)


def _cores() -> tuple[int, int]:
    logical = os.cpu_count() or 1
    physical = 0
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or 0
    except ImportError:
        pass
    return (physical or logical), logical


def _memory_mb() -> tuple[int, int]:
    """(total, available) MB."""
    try:
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.total // 2**20), int(vm.available // 2**20)
    except ImportError:
        pass
    try:
        meminfo = dict(
            (k.strip(), v.split()[0]) for k, _, v in
            (line.partition(":") for line in Path("/proc/meminfo").read_text().splitlines())
        )
        return int(meminfo["MemTotal"]) // 1024, int(meminfo.get("MemAvailable", meminfo["MemTotal"])) // 1024
    except (OSError, KeyError, ValueError):
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return pages * size // 2**20, 0


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def runtime_versions() -> dict[str, str | None]:
    """Installed runtimes (version from package metadata; None when not importable)."""
    ort = _dist_version("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-qnn")
    if ort is None and importlib.util.find_spec("onnxruntime") is not None:
        ort = "unknown"
    litert = None
    if importlib.util.find_spec("ai_edge_litert") is not None:
        litert = _dist_version("ai-edge-litert") or "unknown"
    tflite = None
    if importlib.util.find_spec("tflite_runtime") is not None:
        tflite = _dist_version("tflite-runtime") or "unknown"
    return {"onnxruntime": ort, "litert": litert, "tflite_runtime": tflite}


def custom_kernels() -> str | None:
    """Path of devicefit's built custom-kernel library, or None when none is built (never builds one: a
    probe must not run a compiler)."""
    if importlib.util.find_spec("devicefit.kernels") is None:
        return None
    try:
        from devicefit.kernels import library_path

        found = library_path(build_if_missing=False)
    except Exception:  # a broken kernels package must not break the probe
        return None
    return str(found) if found is not None and Path(found).is_file() else None


def custom_kernels_isa(path: str | None) -> str | None:
    """The SIMD path devicefit's built kernel library runs on this CPU (``avx512vnni``, ``avx2``, ``neon_dot``,
    ``scalar``); None when ``path`` is None or the library does not load."""
    if path is None:
        return None
    try:
        from devicefit.kernels import available

        return available()
    except Exception:  # a broken kernels package must not break the probe
        return None


def storage_mb(path: str | Path) -> tuple[int, int]:
    """(free, total) MB of the filesystem holding ``path`` (the nearest existing parent)."""
    p = Path(path).expanduser().resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    usage = shutil.disk_usage(p)
    return int(usage.free // 2**20), int(usage.total // 2**20)


def probe_system(storage_dir: str | Path | None = None) -> dict[str, Any]:
    """Describe this machine as a JSON-ready dict (fast: no benchmarks; see ``microbench``)."""
    arch = normalize_arch(platform.machine())
    cpuinfo = _read_cpuinfo()
    physical, logical = _cores()
    total_mb, avail_mb = _memory_mb()
    where = Path(storage_dir) if storage_dir is not None else Path.home()
    free_mb, disk_mb = storage_mb(where)
    runtimes = runtime_versions()
    kernel_lib = custom_kernels()
    return {
        "hostname": socket.gethostname(),
        "os": platform.system(),
        "os_release": platform.release(),
        "python": platform.python_version(),
        "arch": arch,
        "machine": platform.machine(),
        "cpu_model": _cpu_model(cpuinfo),
        "cores_physical": physical,
        "cores_logical": logical,
        "max_ghz": _max_ghz(cpuinfo),
        "isa": _cpu_flags(cpuinfo, arch),
        "memory_mb": total_mb,
        "memory_available_mb": avail_mb,
        "storage_dir": str(where),
        "storage_free_mb": free_mb,
        "storage_total_mb": disk_mb,
        "runtimes": runtimes,
        "custom_kernels": kernel_lib is not None,
        "custom_kernels_path": kernel_lib,
        "custom_kernels_isa": custom_kernels_isa(kernel_lib),
    }

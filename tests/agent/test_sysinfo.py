"""probe_system(): what this machine is, in devicefit's names."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import onnxruntime
import psutil
import pytest

from devicefit.agent.sysinfo import normalize_arch, normalize_isa, probe_system
from devicefit.device_profiles import ISA_FEATURES


def test_probe_system_describes_this_machine(tmp_path: Path) -> None:
    info = probe_system(tmp_path)
    assert info["cores_logical"] == os.cpu_count()
    assert 1 <= info["cores_physical"] <= info["cores_logical"]
    total = psutil.virtual_memory().total // 2**20
    assert info["memory_mb"] == total and 0 <= info["memory_available_mb"] <= total
    assert info["arch"] == normalize_arch(platform.machine()) and info["arch"] in ("x86_64", "aarch64")
    assert info["cpu_model"]
    assert info["max_ghz"] >= 0
    assert set(info["isa"]) <= set(ISA_FEATURES)
    assert info["runtimes"]["onnxruntime"] == onnxruntime.__version__
    assert info["storage_dir"] == str(tmp_path)
    assert 0 < info["storage_free_mb"] <= info["storage_total_mb"]
    assert info["os"] == platform.system() and info["python"] == platform.python_version()
    assert isinstance(info["custom_kernels"], bool)
    assert info["custom_kernels"] == (info["custom_kernels_path"] is not None)
    if info["custom_kernels_path"]:
        assert Path(info["custom_kernels_path"]).is_file()


def test_isa_flags_match_proc_cpuinfo() -> None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return
    raw = set()
    for line in cpuinfo.read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            raw = set(value.split())
            break
    isa = set(probe_system()["isa"])
    if platform.machine() == "x86_64":
        assert ("avx2" in isa) == ("avx2" in raw)
        assert ("avx512_vnni" in isa) == ("avx512_vnni" in raw)
        assert ("amx" in isa) == bool({"amx_int8", "amx_tile"} & raw)
    else:
        assert "neon" in isa
        assert ("dotprod" in isa) == ("asimddp" in raw)


def test_normalize_isa_maps_kernel_names() -> None:
    arm = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp i8mm sve bf16"
    assert normalize_isa(arm.split(), "aarch64") == ["neon", "dotprod", "i8mm", "fp16", "bf16", "sve"]
    assert normalize_isa(["fp", "crc32"], "aarch64") == ["neon"]  # AdvSIMD is mandatory on AArch64
    x86 = "sse4_2 avx fma avx2 avx512f avx512bw avx512_vnni avx_vnni amx_tile amx_int8 amx_bf16 sha_ni"
    assert normalize_isa(x86.split(), "x86_64") == [
        "sse4_2", "avx", "fma", "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx",
    ]
    assert normalize_arch("AMD64") == "x86_64" and normalize_arch("arm64") == "aarch64"


def test_the_probe_reports_the_kernel_library_without_building_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GetInfo must not run a compiler: with an empty kernel cache the probe says no library and leaves the
    cache empty; once the library is built, the probe names it."""
    from devicefit.kernels import KernelBuildError, build

    monkeypatch.setenv("DEVICEFIT_CACHE", str(tmp_path / "cache"))
    info = probe_system(tmp_path)
    assert info["custom_kernels"] is False and info["custom_kernels_path"] is None and info["custom_kernels_isa"] is None
    assert not (tmp_path / "cache" / "kernels").exists() or not any((tmp_path / "cache" / "kernels").iterdir())
    try:
        built = build()
    except KernelBuildError as e:  # no C compiler here: the first half is what this test is about
        pytest.skip(f"cannot build the kernels here: {e}")
    info = probe_system(tmp_path)
    assert info["custom_kernels"] is True and info["custom_kernels_path"] == str(built)
    from devicefit.kernels import supported_isas

    assert info["custom_kernels_isa"] in supported_isas()  # the SIMD path it runs here, one this CPU can run

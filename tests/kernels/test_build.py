"""Building the library: from source with the system compiler into the cache dir, a clear error when no
compiler exists, the command line, and the ISA report the agent will read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devicefit import kernels
from devicefit.kernels import builder


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DEVICEFIT_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert builder.cache_dir() == tmp_path / "a" / "kernels"
    monkeypatch.delenv("DEVICEFIT_CACHE")
    assert builder.cache_dir() == tmp_path / "b" / "devicefit" / "kernels"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert builder.cache_dir() == Path.home() / ".cache" / "devicefit" / "kernels"


def test_no_compiler_is_a_clear_error_naming_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no cc, gcc or clang
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("DEVICEFIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(kernels.KernelBuildError, match="no C compiler found") as err:
        kernels.library_path()
    assert "apt-get install gcc" in str(err.value) and "python -m devicefit.kernels build" in str(err.value)
    assert kernels.library_path(build_if_missing=False) is None
    assert kernels.available() is None and kernels.supported_isas() == []


def test_fresh_build_into_cache_and_reuse(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kernel_lib: Path) -> None:
    monkeypatch.setenv("DEVICEFIT_CACHE", str(tmp_path))
    assert kernels.library_path(build_if_missing=False) is None
    path = kernels.library_path()
    assert path is not None and path.parent == tmp_path / "kernels" and path.name.startswith("libdevicefit_kernels-")
    mtime = path.stat().st_mtime_ns
    assert kernels.library_path() == path and path.stat().st_mtime_ns == mtime  # cached, not rebuilt
    assert kernels.library_path(build_if_missing=False) == path


def test_available_reports_the_active_path(kernel_lib: Path, isas: list[str]) -> None:
    assert kernels.available() == isas[0]  # the best supported path is the default
    if os.uname().machine == "x86_64":
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
        assert ("avx2" in isas) == ("avx2" in flags)
        has_vnni512 = {"avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= set(flags)
        assert ("avx512vnni" in isas) == has_vnni512
        if has_vnni512:
            assert isas[0] == "avx512vnni"  # preferred over AVX2


def test_cli_build_and_info(kernel_lib: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "devicefit.kernels", "build"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and Path(out.stdout.strip()).is_file(), out.stderr
    info = subprocess.run([sys.executable, "-m", "devicefit.kernels", "info"], capture_output=True, text=True,
                          timeout=300)
    assert info.returncode == 0 and '"isa"' in info.stdout and "scalar" in info.stdout


def test_sources_ship_as_package_data() -> None:
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"devicefit.kernels" = ["csrc/*.c", "csrc/*.h"]' in text
    for name in (*builder.LIB_SOURCES, *builder.HEADERS, "test_driver.c"):
        assert (builder.SOURCE_DIR / name).is_file()

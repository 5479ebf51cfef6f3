"""Build devicefit's kernel library from the C sources shipped in the package, with the system compiler.

The library is never downloaded: it is compiled on first use (or by ``python -m devicefit.kernels
build``) into a cache directory — ``$DEVICEFIT_CACHE/kernels``, else ``$XDG_CACHE_HOME/devicefit/kernels``,
else ``~/.cache/devicefit/kernels`` — under a name that hashes the sources, the flags and the compiler, so a
changed source or compiler rebuilds and concurrent builders never see a half-written file.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from devicefit.errors import DevicefitError

SOURCE_DIR = Path(__file__).resolve().parent / "csrc"
#: common flags: exact IEEE float (no FMA contraction: every path must round like the numpy reference)
COMMON_FLAGS = ("-O3", "-Wall", "-Wextra", "-fPIC", "-ffp-contract=off", "-fno-math-errno", "-fvisibility=hidden")
LIB_SOURCES = ("dispatch.c", "kern_scalar.c", "kern_avx2.c", "kern_avx512.c", "kern_neon.c", "ort_ops.c")
HEADERS = ("dfk.h", "ort_abi.h")

_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL] = {}


class KernelBuildError(DevicefitError):
    """The kernel library could not be compiled or loaded."""


@dataclass(frozen=True)
class Toolchain:
    """A C compiler and the per-file ISA flags for one target architecture."""

    cc: str
    arch: str  # "x86_64" | "aarch64" | other (scalar only)

    def isa_flags(self, source: str) -> tuple[str, ...]:
        if source == "kern_avx2.c" and self.arch == "x86_64":
            return ("-mavx2",)
        if source == "kern_avx512.c" and self.arch == "x86_64":
            return ("-mavx2", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni")
        if source == "kern_neon.c" and self.arch == "aarch64":
            return ("-march=armv8.2-a+dotprod",)
        return ()


def normalize_arch(machine: str) -> str:
    m = machine.lower()
    if m in ("x86_64", "amd64"):
        return "x86_64"
    if m in ("aarch64", "arm64"):
        return "aarch64"
    return m


def cache_dir() -> Path:
    """Where built libraries live (see the module docstring)."""
    from devicefit.kernels.paths import cache_root

    return cache_root() / "kernels"


def find_compiler() -> str:
    """``$CC`` or ``cc`` / ``gcc`` / ``clang`` on PATH; a clear error naming the fix when there is none."""
    for cand in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cand and shutil.which(cand):
            return cand
    raise KernelBuildError(
        "no C compiler found (tried $CC, cc, gcc, clang): devicefit builds its kernel library from source",
        "install one (Debian/Ubuntu/Raspberry Pi OS: `sudo apt-get install gcc`; Alpine: `apk add gcc musl-dev`), "
        "or set CC=/path/to/compiler, then run `python -m devicefit.kernels build`",
    )


@functools.lru_cache(maxsize=8)
def _compiler_id(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return cc
    return out.splitlines()[0] if out else cc


def source_hash(toolchain: Toolchain) -> str:
    h = hashlib.sha256()
    for name in (*LIB_SOURCES, *HEADERS):
        h.update(name.encode())
        h.update((SOURCE_DIR / name).read_bytes())
    h.update(repr((COMMON_FLAGS, toolchain.arch, _compiler_id(toolchain.cc))).encode())
    for name in LIB_SOURCES:
        h.update(repr(toolchain.isa_flags(name)).encode())
    return h.hexdigest()[:16]


def compile_objects(toolchain: Toolchain, out_dir: Path, extra: tuple[str, ...] = ()) -> list[Path]:
    """Compile every library source to an object file in ``out_dir`` (one invocation per file: the
    ISA-specific files get their own ``-m`` flags); compiler output is part of the error."""
    objs = []
    for name in LIB_SOURCES:
        obj = out_dir / (name + ".o")
        cmd = [toolchain.cc, *COMMON_FLAGS, *extra, *toolchain.isa_flags(name), "-c", str(SOURCE_DIR / name),
               "-o", str(obj)]
        _run(cmd)
        objs.append(obj)
    return objs


def _run(cmd: list[str]) -> None:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except OSError as exc:
        raise KernelBuildError(f"could not run the C compiler: {exc}", "check that `cc` works") from exc
    if res.returncode != 0 or res.stderr.strip():  # warnings are errors: the sources build clean
        raise KernelBuildError(
            f"building devicefit's kernels failed: {' '.join(cmd)}\n{res.stderr.strip()}",
            "report this with the compiler output above (set CC to try another compiler)",
        )


def build(*, force: bool = False) -> Path:
    """Compile the library for this machine (if not cached already) and return its path."""
    tc = Toolchain(find_compiler(), normalize_arch(platform.machine()))
    out = cache_dir() / f"libdevicefit_kernels-{tc.arch}-{source_hash(tc)}.so"
    if out.is_file() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="devicefit-kernels-", dir=out.parent) as tmp:
        objs = compile_objects(tc, Path(tmp))
        tmp_lib = Path(tmp) / out.name
        _run([tc.cc, "-shared", "-o", str(tmp_lib), *map(str, objs), "-lm"])
        os.replace(tmp_lib, out)  # atomic: concurrent builders race harmlessly
    return out


def library_path(*, build_if_missing: bool = True) -> Path | None:
    """Path of the kernel library for this machine: built on first use unless ``build_if_missing=False``
    (then None when it is not built yet)."""
    if build_if_missing:
        with _lock:
            return build()
    try:
        tc = Toolchain(find_compiler(), normalize_arch(platform.machine()))
    except KernelBuildError:
        return None
    out = cache_dir() / f"libdevicefit_kernels-{tc.arch}-{source_hash(tc)}.so"
    return out if out.is_file() else None


def load() -> ctypes.CDLL:
    """The library loaded through ctypes (built first if needed), with the C entry points' signatures."""
    path = str(library_path())
    with _lock:
        if path not in _loaded:
            lib = ctypes.CDLL(path)
            for fn in ("dfk_version", "dfk_isa_name", "dfk_isa_list"):
                getattr(lib, fn).restype = ctypes.c_char_p
                getattr(lib, fn).argtypes = []
            lib.dfk_isa_supported.restype = ctypes.c_int
            lib.dfk_isa_supported.argtypes = [ctypes.c_char_p]
            _loaded[path] = lib
        return _loaded[path]


def build_test_driver(toolchain: Toolchain, out: Path, *, static: bool = False) -> Path:
    """Compile ``csrc/test_driver.c`` with the library sources into an executable (for a cross
    toolchain, e.g. ``Toolchain("aarch64-linux-gnu-gcc", "aarch64")`` with ``static=True`` for qemu-user)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="devicefit-kernels-driver-") as tmp:
        objs = compile_objects(toolchain, Path(tmp))
        drv = Path(tmp) / "test_driver.o"
        _run([toolchain.cc, *COMMON_FLAGS, "-c", str(SOURCE_DIR / "test_driver.c"), "-o", str(drv)])
        _run([toolchain.cc, *(["-static"] if static else []), "-o", str(out), str(drv), *map(str, objs), "-lm"])
    return out

"""Resident-set-size measurement for benchmarks inside a long-lived process.

``ru_maxrss`` is the peak over the whole process lifetime, so in the agent (which has loaded other models
and received uploads before) it says nothing about the model being measured, and running each benchmark in
a fresh subprocess would double memory and start-up cost on a small board. Instead :class:`PeakRss`

* on Linux resets the kernel's peak counter (``echo 5 > /proc/self/clear_refs`` resets ``VmHWM`` to the
  current RSS) on entry and reads ``VmHWM`` on exit: the exact peak over the measured window, and
* always samples RSS from a background thread every ``interval_s`` (the fallback where ``clear_refs`` is
  unavailable; it may miss a peak shorter than the interval).

The peak is the whole process's RSS (interpreter + runtime + other models + this model); ``baseline_mb`` is
the RSS before the window, so ``peak_mb - baseline_mb`` is what the work inside the window added — for a
benchmark, the model's own memory, which is what a memory budget is about (the agent alone is ~55 MB idle on a
64-bit host, a number that says nothing about the model). :func:`release_free_memory` first returns memory
freed by earlier models to the OS, so a new model's allocations cannot hide in pages the allocator kept.
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
from types import TracebackType

_MB = 1024.0 * 1024.0


def current_rss_mb() -> float:
    """This process's resident set size in MB."""
    try:
        import psutil

        return float(psutil.Process().memory_info().rss) / _MB
    except ImportError:  # pragma: no cover - psutil is in the agent extra
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / _MB


def release_free_memory() -> bool:
    """Collect garbage and ask glibc to return freed heap pages to the OS (``malloc_trim(0)``), so the RSS
    that follows is what is in use. Returns False where there is no glibc (the collection still runs)."""
    gc.collect()
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own symbols: glibc's, where it is the libc
    except (OSError, AttributeError):  # musl, macOS, Windows: no malloc_trim
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True


def _read_hwm_mb() -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


class PeakRss:
    """Context manager measuring this process's peak RSS (MB) over the ``with`` block."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.baseline_mb = 0.0
        self.peak_mb = 0.0
        self.method = "sampled"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hwm_reset = False

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mb = max(self.peak_mb, current_rss_mb())

    def __enter__(self) -> PeakRss:
        self._hwm_reset = _reset_hwm()
        self.baseline_mb = current_rss_mb()
        self.peak_mb = self.baseline_mb
        self._thread = threading.Thread(target=self._sample, name="devicefit-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mb = max(self.peak_mb, current_rss_mb())
        hwm = _read_hwm_mb() if self._hwm_reset else None
        if hwm is not None:
            self.peak_mb = max(self.peak_mb, hwm)
            self.method = "vmhwm"

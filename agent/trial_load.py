"""Contained model loads: a model the agent has not loaded before is first loaded and run once in a child process.

A model can take a runtime down at load or at its first run: a segfault in the parser (a mutated .tflite
flatbuffer kills LiteRT by SIGSEGV), minutes of constant folding at session creation, gigabytes allocated for a
folded constant. In the agent's own process each of these would stop it serving its active model, or stop it
altogether. So before the agent activates or benchmarks a model it has not loaded successfully before (by
sha256), :class:`TrialLoader` runs ``python -m devicefit.agent.trial_load FILE`` — the same runner, session
options and custom-op libraries as the agent, one run on generated inputs — with a timeout and an address-space
limit (``RLIMIT_AS``, set in the child). A death by signal, a non-zero exit, a timeout (the child is killed by
its PID) or an allocation that fails under the limit refuses the model with ``LOAD_FAILED`` and a message
saying which; the verdict is remembered per sha256, so a good model pays the cost once (about 0.4 s on a
2-core x86: Python, numpy and the runtime imported afresh). The agent keeps serving meanwhile: the handler
waits on the child without holding the activation or benchmark lock.

The child asks the kernel to SIGKILL it when the agent dies (``PR_SET_PDEATHSIG``), so a hung trial never
outlives the agent.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devicefit.protos import errors as E
from devicefit.protos.errors import AgentError

#: default seconds a trial load (load + one run) may take
DEFAULT_TIMEOUT_S = 120.0
#: child exit codes: the runner raised an ordinary load error / an allocation failed under the memory limit
EXIT_FAILED, EXIT_MEMORY = 3, 4
_ALLOC_RE = re.compile(r"bad_alloc|Failed to allocate memory|MemoryError|out of memory|Cannot allocate memory", re.I)


def physical_memory_mb() -> float:
    """The device's physical memory in MiB (0 where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 0.0


@dataclass(frozen=True)
class Verdict:
    """The outcome of one trial load: ``ok``, or the problem and fix that refuse the model."""

    ok: bool
    problem: str = ""
    fix: str = ""
    load_ms: float = 0.0
    first_run_ms: float = 0.0
    trial_ms: float = 0.0  # wall time of the whole trial, child start-up included


class TrialLoader:
    """Trial-loads models in a child process and remembers the verdict per sha256.

    ``timeout_s``: the most a trial (start-up, load, one run) may take. ``memory_mb``: the child's address-space
    limit (Python and the runtime included, ~0.3-0.5 GB of it); ``None``: the device's physical memory; ``0``:
    no limit. ``enabled=False`` loads every model in the agent's process directly (no containment)."""

    def __init__(self, *, timeout_s: float = DEFAULT_TIMEOUT_S, memory_mb: float | None = None,
                 enabled: bool = True) -> None:
        if timeout_s <= 0:
            raise ValueError(f"trial timeout_s={timeout_s} is not positive; pass seconds > 0")
        if memory_mb is not None and memory_mb < 0:
            raise ValueError(f"trial memory_mb={memory_mb} is negative; pass MiB > 0, or 0 for no limit")
        self.timeout_s = float(timeout_s)
        self.memory_mb = float(physical_memory_mb() if memory_mb is None else memory_mb)
        self.enabled = enabled
        self._verdicts: dict[str, Verdict] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def verdict(self, sha256: str) -> Verdict | None:
        """The remembered verdict for ``sha256`` (None: never tried)."""
        return self._verdicts.get(sha256)

    def mark_good(self, sha256: str) -> None:
        """Remember that ``sha256`` loaded and ran in the agent's own process (no trial needed)."""
        with self._guard:
            self._verdicts.setdefault(sha256, Verdict(ok=True))

    def check(self, path: str | Path, *, sha256: str, fmt: str, label: str) -> Verdict:
        """The verdict for this model, trial-loading it once; AgentError(LOAD_FAILED) when it is refused."""
        if not self.enabled:
            return Verdict(ok=True)
        with self._guard:
            lock = self._locks.setdefault(sha256, threading.Lock())
        with lock:  # one trial per model at a time; trials of different models run side by side
            verdict = self._verdicts.get(sha256)
            if verdict is None:
                verdict = self._trial(Path(path), fmt)
                with self._guard:
                    self._verdicts[sha256] = verdict
        if not verdict.ok:
            raise AgentError(E.LOAD_FAILED, f"model {label} ({sha256[:12]}) was refused: {verdict.problem}",
                             f"{verdict.fix}; the previously active model is still active")
        return verdict

    def command(self, path: Path, fmt: str) -> list[str]:
        """The child's command line."""
        return [sys.executable, "-m", "devicefit.agent.trial_load", str(path), "--format", fmt,
                "--memory-mb", f"{self.memory_mb:g}", "--parent-pid", str(os.getpid())]

    def _trial(self, path: Path, fmt: str) -> Verdict:
        env = {**os.environ, "MALLOC_ARENA_MAX": "2", "PYTHONUNBUFFERED": "1"}
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(self.command(path, fmt), capture_output=True, timeout=self.timeout_s, env=env,
                                  stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:  # subprocess.run has killed the child (SIGKILL by its PID) and reaped it
            return Verdict(
                ok=False,
                problem=f"it did not load and run once within {self.timeout_s:g} s (the trial load was killed); "
                        "a model that constant-folds large tensors at load can take minutes",
                fix="if it is this slow on purpose, restart the agent with a larger --trial-timeout; otherwise "
                    "re-export it (fold large constants on the host)",
                trial_ms=(time.perf_counter() - t0) * 1e3,
            )
        ms = (time.perf_counter() - t0) * 1e3
        report = _last_json(proc.stdout)
        stderr = proc.stderr.decode(errors="replace").strip()[-300:]
        if proc.returncode == 0 and report.get("ok"):
            return Verdict(ok=True, load_ms=float(report.get("load_ms", 0.0)),
                           first_run_ms=float(report.get("first_run_ms", 0.0)), trial_ms=ms)
        if proc.returncode < 0:
            try:
                name = signal.Signals(-proc.returncode).name
            except ValueError:
                name = f"signal {-proc.returncode}"
            return Verdict(
                ok=False,
                problem=f"the {fmt} runtime crashed loading or running it: the trial process died of {name} "
                        "(in the agent's own process this would have taken the agent down)",
                fix="check the file on the host (`devicefit bench FILE`) and re-export it; it is corrupt or "
                    "triggers a runtime bug",
                trial_ms=ms,
            )
        if proc.returncode == EXIT_MEMORY:
            return Verdict(
                ok=False,
                problem=f"it needs more memory than the trial limit of {self.memory_mb:g} MiB of address space to "
                        f"load and run once ({str(report.get('problem', ''))[:200]})",
                fix="shrink the model (quantize / prune), or restart the agent with a larger --trial-memory-mb "
                    "if the device has the memory",
                trial_ms=ms,
            )
        if proc.returncode == EXIT_FAILED and report:
            return Verdict(ok=False, problem=f"it did not load and run: {str(report.get('problem', ''))[:300]}",
                           fix=str(report.get("fix") or "check the file with `devicefit bench FILE` on the host"),
                           trial_ms=ms)
        return Verdict(ok=False, problem=f"the trial load exited with code {proc.returncode}: {stderr or 'no output'}",
                       fix="check the file with `devicefit bench FILE` on the host; see the agent's log", trial_ms=ms)


def _last_json(out: bytes) -> dict[str, Any]:
    """The last line of ``out`` that is a JSON object ({} if none)."""
    for line in reversed(out.decode(errors="replace").splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}


# ---- the child ------------------------------------------------------------------------------------------------
def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux); exit if the parent is already gone."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover
            pass
    if parent_pid and os.getppid() != parent_pid:
        os._exit(EXIT_FAILED)


def _import_runtime(runner: str) -> None:
    if runner == "onnxruntime":
        import onnxruntime  # noqa: F401
    elif runner == "litert":
        from devicefit.agent.runners.litert_runner import import_interpreter

        import_interpreter()


def _emit(report: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Load FILE with the agent's runner and run it once; print one JSON line; exit 0 / EXIT_FAILED / EXIT_MEMORY."""
    p = argparse.ArgumentParser(prog="python -m devicefit.agent.trial_load", description=main.__doc__)
    p.add_argument("path")
    p.add_argument("--format", required=True)
    p.add_argument("--memory-mb", type=float, default=0.0, help="address-space limit in MiB (0: none)")
    p.add_argument("--parent-pid", type=int, default=0)
    args = p.parse_args(argv)
    _die_with_parent(args.parent_pid)
    from devicefit.agent.benchmark import make_inputs
    from devicefit.agent.runners import runner_for

    try:
        spec = runner_for(args.format)
        _import_runtime(spec.name)  # before the limit: it bounds what the model needs, not the runtime's import
        if args.memory_mb > 0:
            import resource

            limit = int(args.memory_mb * 2**20)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        t0 = time.perf_counter()
        runner = spec.factory(args.path, threads=None)
        load_ms = (time.perf_counter() - t0) * 1e3
        feeds = make_inputs(runner.inputs())
        t0 = time.perf_counter()
        runner.run(feeds)
        first_ms = (time.perf_counter() - t0) * 1e3
    except BaseException as exc:  # every failure (SystemExit and KeyboardInterrupt too) is reported to the parent
        cause = exc.__cause__ or exc
        text = f"{getattr(exc, 'problem', None) or exc} {cause}"
        memory = args.memory_mb > 0 and (isinstance(cause, MemoryError) or bool(_ALLOC_RE.search(text)))
        _emit({"ok": False, "problem": str(getattr(exc, "problem", None) or f"{type(exc).__name__}: {exc}")[:400],
               "fix": getattr(exc, "fix", None) or "", "memory": memory})
        return EXIT_MEMORY if memory else EXIT_FAILED
    _emit({"ok": True, "load_ms": load_ms, "first_run_ms": first_ms})
    runner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

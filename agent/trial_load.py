"""Contained model loads: a model the agent has not loaded before is first loaded and run once in a child process.

A model can take a runtime down at load or at its first run: a segfault in the parser (a mutated .tflite
flatbuffer kills LiteRT by SIGSEGV), minutes of constant folding at session creation, gigabytes allocated for a
folded constant. In the agent's own process each of these would stop it serving its active model, or stop it
altogether. So before the agent activates or benchmarks a model it has not loaded successfully before (by
sha256), :class:`TrialLoader` loads it in a child process — the same runner, session options and custom-op
libraries as the agent, one run on generated inputs — with a timeout and an address-space limit (``RLIMIT_AS``,
set in the child). A death by signal, a non-zero exit, a timeout (the child is killed by its PID) or an
allocation that fails under the limit refuses the model with ``LOAD_FAILED`` and a message saying which; the
verdict is remembered per sha256, so a good model pays the cost once. The agent keeps serving meanwhile: the
handler waits on the child without holding the activation or benchmark lock.

The children are forked from a small fork server (``python -m devicefit.agent.trial_load --serve``, started on
first use) that has imported the runtimes once: a trial of a small model costs ~40 ms instead of the ~0.4 s of
a fresh interpreter importing numpy and the runtime (2-core x86). Trials take turns on the server; while it is
busy with a slow one, a trial that waited 0.5 s for it runs as ``python -m devicefit.agent.trial_load FILE --format F`` (a process of its
own). The server
dies with the agent and each child dies with the server (``PR_SET_PDEATHSIG``), so a hung trial never outlives
the agent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import select
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
log = logging.getLogger("devicefit.agent")
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

    #: verdicts remembered (a forgotten model is trial-loaded again when it is next used)
    MAX_VERDICTS = 4096
    #: how long a trial waits for the fork server (busy with another trial) before it starts a process of its own
    SERVER_WAIT_S = 0.5

    def __init__(self, *, timeout_s: float = DEFAULT_TIMEOUT_S, memory_mb: float | None = None,
                 enabled: bool = True) -> None:
        if timeout_s <= 0:
            raise ValueError(f"trial timeout_s={timeout_s} is not positive; pass seconds > 0")
        if memory_mb is not None and memory_mb < 0:
            raise ValueError(f"trial memory_mb={memory_mb} is negative; pass MiB > 0, or 0 for no limit")
        self.timeout_s = float(timeout_s)
        self.memory_mb = float(physical_memory_mb() if memory_mb is None else memory_mb)
        self.enabled = enabled
        self.use_fork_server = True
        self._verdicts: dict[str, Verdict] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._server: _ForkServer | None = None

    def verdict(self, sha256: str) -> Verdict | None:
        """The remembered verdict for ``sha256`` (None: never tried)."""
        return self._verdicts.get(sha256)

    def mark_good(self, sha256: str) -> None:
        """Remember that ``sha256`` loaded and ran in the agent's own process (no trial needed)."""
        with self._guard:
            old = self._verdicts.pop(sha256, None)  # re-inserted as the newest: the active model is forgotten last
            self._verdicts[sha256] = old if old is not None and old.ok else Verdict(ok=True)

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
                    while len(self._verdicts) > self.MAX_VERDICTS:  # bounded: the oldest are forgotten
                        del self._verdicts[next(iter(self._verdicts))]
                    self._locks.pop(sha256, None)  # waiters hold it; later callers find the verdict
        if not verdict.ok:
            raise AgentError(E.LOAD_FAILED, f"model {label} ({sha256[:12]}) was refused: {verdict.problem}",
                             f"{verdict.fix}; the previously active model is still active")
        return verdict

    def command(self, path: Path, fmt: str) -> list[str]:
        """The one-shot child's command line (used when the fork server is busy or unavailable)."""
        return [sys.executable, "-m", "devicefit.agent.trial_load", str(path), "--format", fmt,
                "--memory-mb", f"{self.memory_mb:g}", "--parent-pid", str(os.getpid())]

    def close(self) -> None:
        """Stop the fork server (it also dies with the agent)."""
        with self._guard:
            server, self._server = self._server, None
        if server is not None:
            server.close()

    def _fork_server(self) -> _ForkServer | None:
        """The running fork server (started on first use), or None when it cannot start."""
        with self._guard:
            if self._server is not None and not self._server.alive():
                self._server.close()
                self._server = None
            if self._server is None and self.use_fork_server:
                try:
                    self._server = _ForkServer(_child_env())
                except (OSError, TimeoutError) as exc:
                    log.warning("trial-load fork server did not start (%s); trials start a process each", exc)
                    self.use_fork_server = False
            return self._server

    def _trial(self, path: Path, fmt: str) -> Verdict:
        t0 = time.perf_counter()
        server = self._fork_server()
        outcome: tuple[int, dict[str, Any], str] | None
        if server is not None and server.lock.acquire(timeout=self.SERVER_WAIT_S):
            try:  # forked from a process that has the runtimes imported: ~40 ms instead of ~0.4 s
                outcome = server.trial(path, fmt, self.memory_mb, self.timeout_s)
            except OSError as exc:  # the server itself went away: this trial runs on its own
                log.warning("trial-load fork server failed (%s); trying %s in a process of its own", exc, path.name)
                outcome = self._one_shot(path, fmt)
            finally:
                server.lock.release()
        else:  # the fork server is busy with a slow trial (or off): a process of its own
            outcome = self._one_shot(path, fmt)
        return self._verdict(outcome, fmt, (time.perf_counter() - t0) * 1e3)

    def _one_shot(self, path: Path, fmt: str) -> tuple[int, dict[str, Any], str] | None:
        """(returncode, report, stderr) of ``python -m devicefit.agent.trial_load FILE``; None past the timeout."""
        try:
            proc = subprocess.run(self.command(path, fmt), capture_output=True, timeout=self.timeout_s,
                                  env=_child_env(), stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:  # subprocess.run has killed the child (SIGKILL by its PID) and reaped it
            return None
        return proc.returncode, _last_json(proc.stdout), proc.stderr.decode(errors="replace")

    def _verdict(self, outcome: tuple[int, dict[str, Any], str] | None, fmt: str, ms: float) -> Verdict:
        if outcome is None:
            return Verdict(
                ok=False,
                problem=f"it did not load and run once within {self.timeout_s:g} s (the trial load was killed); "
                        "a model that constant-folds large tensors at load can take minutes",
                fix="if it is this slow on purpose, restart the agent with a larger --trial-timeout; otherwise "
                    "re-export it (fold large constants on the host)",
                trial_ms=ms,
            )
        returncode, report, stderr = outcome
        stderr = stderr.strip()[-300:]
        if returncode == 0 and report.get("ok"):
            return Verdict(ok=True, load_ms=float(report.get("load_ms", 0.0)),
                           first_run_ms=float(report.get("first_run_ms", 0.0)), trial_ms=ms)
        if returncode < 0:
            try:
                name = signal.Signals(-returncode).name
            except ValueError:
                name = f"signal {-returncode}"
            why = " (SIGKILL: most often the kernel's out-of-memory killer)" if returncode == -signal.SIGKILL else ""
            return Verdict(
                ok=False,
                problem=f"the {fmt} runtime crashed loading or running it: the trial process died of {name}{why} "
                        "(in the agent's own process this would have taken the agent down)",
                fix="check the file on the host (`devicefit bench FILE`) and re-export it; it is corrupt or "
                    "triggers a runtime bug",
                trial_ms=ms,
            )
        if returncode == EXIT_MEMORY:
            return Verdict(
                ok=False,
                problem=f"it needs more memory than the trial limit of {self.memory_mb:g} MiB of address space to "
                        f"load and run once ({str(report.get('problem', ''))[:200]})",
                fix="shrink the model (quantize / prune), or restart the agent with a larger --trial-memory-mb "
                    "if the device has the memory",
                trial_ms=ms,
            )
        if returncode == EXIT_FAILED and report:
            return Verdict(ok=False, problem=f"it did not load and run: {str(report.get('problem', ''))[:300]}",
                           fix=str(report.get("fix") or "check the file with `devicefit bench FILE` on the host"),
                           trial_ms=ms)
        return Verdict(ok=False, problem=f"the trial load exited with code {returncode}: {stderr or 'no output'}",
                       fix="check the file with `devicefit bench FILE` on the host; see the agent's log", trial_ms=ms)


def _child_env() -> dict[str, str]:
    # two malloc arenas: the address-space limit then measures the model, not per-thread arena reservations
    return {**os.environ, "MALLOC_ARENA_MAX": "2", "PYTHONUNBUFFERED": "1"}


class _ForkServer:
    """``python -m devicefit.agent.trial_load --serve``: imports the runtimes once, then forks one child per trial.

    Protocol (JSON lines): it prints ``{"ready": true}``; each request ``{"path", "format", "memory_mb"}`` on its
    stdin is answered with ``{"pid": N}`` when the child is forked and ``{"returncode": RC, "report": {...}}``
    when it has ended (RC < 0: killed by that signal). The server asks to be SIGKILLed when the thread that
    started it ends; that thread waits on it for the agent's lifetime, so the server dies with the agent, and
    each child dies with the server."""

    START_TIMEOUT_S = 60.0

    def __init__(self, env: dict[str, str]) -> None:
        self.lock = threading.Lock()
        self._buf = b""
        started: dict[str, Any] = {}
        ready = threading.Event()

        def _own() -> None:  # the server's parent thread: alive as long as the server
            try:
                started["proc"] = subprocess.Popen(
                    [sys.executable, "-m", "devicefit.agent.trial_load", "--serve", "--parent-pid", str(os.getpid())],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
            except OSError as exc:
                started["error"] = exc
            ready.set()
            if "proc" in started:
                started["proc"].wait()

        threading.Thread(target=_own, name="trial-fork-server", daemon=True).start()
        ready.wait()
        if "error" in started:
            raise started["error"]
        self.proc: subprocess.Popen[bytes] = started["proc"]
        line = self._line(time.monotonic() + self.START_TIMEOUT_S)
        if line is None or not line.get("ready"):
            self.close()
            raise TimeoutError(f"the trial-load fork server did not start within {self.START_TIMEOUT_S:g} s")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()

    def _line(self, deadline: float) -> dict[str, Any] | None:
        """The next JSON line from the server, or None at the deadline / when it has gone."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        value = _last_json(line)
        return value

    def trial(self, path: Path, fmt: str, memory_mb: float, timeout_s: float) -> tuple[int, dict[str, Any], str] | None:
        """(returncode, report, "") of one trial; None when it ran past ``timeout_s`` (the child is killed);
        OSError when the server has gone."""
        assert self.proc.stdin is not None
        deadline = time.monotonic() + timeout_s
        try:
            self.proc.stdin.write(json.dumps({"path": str(path), "format": fmt, "memory_mb": memory_mb}).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            self.close()
            raise
        started = self._line(deadline)
        done = self._line(deadline) if started is not None else None
        if done is not None and "returncode" in done:
            return int(done["returncode"]), dict(done.get("report") or {}), ""
        if time.monotonic() < deadline:  # no answer, yet time is left: the server has gone
            self.close()
            raise OSError("the trial-load fork server stopped answering")
        if started is not None and "pid" in started:  # past the deadline: kill the child by its PID
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(started["pid"]), signal.SIGKILL)
            done = self._line(time.monotonic() + 10.0)
            if done is not None and "returncode" in done:
                return None
        self.close()  # out of step with the server: start a fresh one next time
        return None


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


def run_trial(path: str, fmt: str, memory_mb: float) -> tuple[int, dict[str, Any]]:
    """In this (child) process: limit the address space, load ``path`` with the agent's runner, run it once on
    generated inputs. Returns (exit code, report): 0 / EXIT_FAILED / EXIT_MEMORY."""
    from devicefit.agent.benchmark import make_inputs
    from devicefit.agent.runners import runner_for

    try:
        spec = runner_for(fmt)
        _import_runtime(spec.name)  # before the limit: it bounds what the model needs, not the runtime's import
        if memory_mb > 0:
            import resource

            limit = int(memory_mb * 2**20)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        t0 = time.perf_counter()
        runner = spec.factory(path, threads=None)
        load_ms = (time.perf_counter() - t0) * 1e3
        feeds = make_inputs(runner.inputs())
        t0 = time.perf_counter()
        runner.run(feeds)
        first_ms = (time.perf_counter() - t0) * 1e3
    except BaseException as exc:  # every failure (SystemExit and KeyboardInterrupt too) is reported to the parent
        cause = exc.__cause__ or exc
        text = f"{getattr(exc, 'problem', None) or exc} {cause}"
        memory = memory_mb > 0 and (isinstance(cause, MemoryError) or bool(_ALLOC_RE.search(text)))
        return (EXIT_MEMORY if memory else EXIT_FAILED), {
            "ok": False, "problem": str(getattr(exc, "problem", None) or f"{type(exc).__name__}: {exc}")[:400],
            "fix": getattr(exc, "fix", None) or "", "memory": memory}
    runner.close()
    return 0, {"ok": True, "load_ms": load_ms, "first_run_ms": first_ms}


def _emit(report: dict[str, Any], fd: int = 1) -> None:
    data = (json.dumps(report) + "\n").encode()
    while data:
        data = data[os.write(fd, data):]


def _serve() -> int:
    """The fork server's loop (see :class:`_ForkServer`)."""
    from devicefit.agent.runners import RUNNERS

    for spec in RUNNERS.values():  # imported once here, inherited by every forked child
        if spec.available():
            with contextlib.suppress(Exception):
                _import_runtime(spec.name)
    _emit({"ready": True})
    for line in sys.stdin:
        req = json.loads(line)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the trial child
            os.close(r)
            _die_with_parent(0)
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)  # the protocol pipe is the server's alone
            code, report = run_trial(str(req["path"]), str(req["format"]), float(req["memory_mb"]))
            _emit(report, w)
            os._exit(code)
        os.close(w)
        _emit({"pid": pid})
        out = b""
        while chunk := os.read(r, 65536):
            out += chunk
        os.close(r)
        _, status = os.waitpid(pid, 0)
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        _emit({"pid": pid, "returncode": rc, "report": _last_json(out)})
    return 0


def main(argv: list[str] | None = None) -> int:
    """Load FILE with the agent's runner and run it once; print one JSON line; exit 0 / EXIT_FAILED / EXIT_MEMORY.
    With --serve: run the fork server instead."""
    p = argparse.ArgumentParser(prog="python -m devicefit.agent.trial_load", description=main.__doc__)
    p.add_argument("path", nargs="?")
    p.add_argument("--format", default="")
    p.add_argument("--memory-mb", type=float, default=0.0, help="address-space limit in MiB (0: none)")
    p.add_argument("--parent-pid", type=int, default=0)
    p.add_argument("--serve", action="store_true", help="fork server: requests as JSON lines on stdin")
    args = p.parse_args(argv)
    _die_with_parent(args.parent_pid)
    if args.serve:
        return _serve()
    if not args.path or not args.format:
        p.error("FILE and --format are required")
    code, report = run_trial(args.path, args.format, args.memory_mb)
    _emit(report)
    return code


if __name__ == "__main__":
    sys.exit(main())

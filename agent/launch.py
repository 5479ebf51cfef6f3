"""Start an agent as a child process (tests, benchmarks, a local demo device).

    with spawn_agent(tmp / "store", device_id="bench") as agent:
        dev = devicefit.connect(agent.url)

The child is ``python -m devicefit.agent --grpc 127.0.0.1:0 …``; its first stdout line carries the bound
address (``address=None`` with ``extra_args=("--mqtt", URL, "--fleet", NAME)``: an MQTT-only agent whose
``url`` is ``mqtt://BROKER/FLEET/ID``). Its log (stderr) goes to ``<store>/agent.log``. Leaving the ``with`` block stops it (SIGTERM, then
SIGKILL after ``stop_timeout``); if this process dies first (killed, no cleanup), the agent stops by itself
(``--exit-with-parent``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType

from devicefit.errors import DeviceError

_URL_RE = re.compile(r"(?:listening on|serving) ((?:grpc|mqtts?)://\S+)")


class AgentProcess:
    """A running agent child process."""

    def __init__(
        self,
        store: str | Path,
        *,
        device_id: str = "local",
        address: str | None = "127.0.0.1:0",
        extra_args: tuple[str, ...] = (),
        start_timeout: float = 60.0,
        stop_timeout: float = 15.0,
    ) -> None:
        self.store = Path(store)
        self.store.mkdir(parents=True, exist_ok=True)
        self.log_path = self.store / "agent.log"
        self.stop_timeout = stop_timeout
        grpc = ["--grpc", address] if address is not None else []
        cmd = [sys.executable, "-m", "devicefit.agent", *grpc, "--store", str(self.store), "--device-id", device_id,
               "--exit-with-parent", str(os.getpid()), *extra_args]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, env=env, text=True)
        self.url = ""
        found = threading.Event()

        def _read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                m = _URL_RE.search(line)
                if m and not self.url:
                    self.url = m.group(1)
                    found.set()
            found.set()  # EOF: the child exited

        self._reader = threading.Thread(target=_read, name="agent-stdout", daemon=True)
        self._reader.start()
        if not found.wait(start_timeout) or not self.url:
            self.stop()
            raise DeviceError(
                f"agent did not start within {start_timeout:g} s (exit code {self.proc.poll()}); "
                f"log: {self.log_tail()}",
                f"see {self.log_path}",
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL (a crash, for tests): no cleanup happens in the agent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(self.stop_timeout)
        self._close()

    def stop(self) -> int | None:
        """SIGTERM and wait (graceful); SIGKILL if it does not exit in time. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(self.stop_timeout)
        self._close()
        return self.proc.returncode

    def _close(self) -> None:
        self._reader.join(5.0)  # the child is gone: its stdout reaches EOF
        if self.proc.stdout is not None and not self._reader.is_alive():
            self.proc.stdout.close()
        self._log.close()

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def spawn_agent(
    store: str | Path, *, device_id: str = "local", extra_args: tuple[str, ...] = (), start_timeout: float = 60.0
) -> AgentProcess:
    """Start ``python -m devicefit.agent`` on a free loopback port; see :class:`AgentProcess`."""
    return AgentProcess(store, device_id=device_id, extra_args=extra_args, start_timeout=start_timeout)

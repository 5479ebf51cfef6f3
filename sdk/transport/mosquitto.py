"""A local Mosquitto (the Debian package ``mosquitto``) on a loopback port, for tests and benchmarks.

Mosquitto's default queue limits drop QoS 1 messages under bursts (a wave's chunks to many devices), so the
generated config raises ``max_queued_messages`` / ``max_inflight_messages``. Started as a child process and
stopped by PID; :meth:`restart` keeps the port (a broker restart in the middle of a transfer).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from devicefit.errors import UserInputError
from devicefit.transport.broker import free_port

INSTALL = "apt-get install -y mosquitto (or run .ci/install-system-deps.sh)"


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if Path(p).exists()), None)


class Mosquitto:
    """``mosquitto -c <generated config>`` on 127.0.0.1:``port`` (0: a free one)."""

    def __init__(self, workdir: str | Path, *, port: int = 0, max_queued: int = 1_000_000, sys_interval: int = 10,
                 users: dict[str, str] | None = None, acl_file: str | Path | None = None,
                 tls: tuple[str | Path, str | Path] | None = None) -> None:
        """``users`` (name -> password): anonymous clients are refused and these log in (a ``mosquitto_passwd``
        file is written); ``acl_file``: topic rules (see :mod:`devicefit.fleet.acl`); ``tls``: (certificate, key) of a
        TLS listener (clients connect with ``mqtts://…?ca=CA.pem``)."""
        binary = mosquitto_binary()
        if binary is None:
            raise UserInputError("mosquitto is not installed", INSTALL)
        self.binary, self.port = binary, port or free_port()
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "mosquitto.conf"
        auth = "allow_anonymous true\n"
        if users:
            pw = self.dir / "passwd"
            pw.write_text("")
            for name, secret in users.items():
                subprocess.run([shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-b", str(pw), name,
                                secret], check=True, capture_output=True)
            auth = f"allow_anonymous false\npassword_file {pw}\n"
        if acl_file is not None:
            auth += f"acl_file {Path(acl_file).resolve()}\n"
        if tls is not None:
            auth += f"certfile {Path(tls[0]).resolve()}\nkeyfile {Path(tls[1]).resolve()}\n"
        if (users or acl_file is not None or tls is not None) and os.geteuid() == 0:  # else it drops to a user that cannot read them
            auth = "user root\n" + auth
        self.tls = tls is not None
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n{auth}persistence false\n"
            f"max_queued_messages {max_queued}\nmax_queued_bytes 0\nmax_inflight_messages 0\n"
            f"max_keepalive 60\nsys_interval {sys_interval}\nlog_dest file {self.dir / 'mosquitto.log'}\nlog_type error\nlog_type warning\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise UserInputError(f"mosquitto exited with code {self.proc.returncode}", f"see {self.dir}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise UserInputError(f"mosquitto did not listen on port {self.port} within {timeout:g} s", f"see {self.dir}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Mosquitto:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

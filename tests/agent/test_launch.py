"""A spawned local agent does not outlive the process that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from devicefit.agent.serve_args import watch_parent


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its new parent) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_agent_stops_when_the_process_that_spawned_it_is_killed(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from devicefit.agent.launch import spawn_agent
        agent = spawn_agent({str(tmp_path / "store")!r}, device_id="orphan")
        print(agent.pid, agent.url, flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid_text, url = parent.stdout.readline().split()
        agent_pid = int(pid_text)
        assert url.startswith("grpc://127.0.0.1:") and _alive(agent_pid)
        parent.send_signal(signal.SIGKILL)  # no cleanup runs in the parent
        parent.wait(10)
        deadline = time.monotonic() + 60
        while _alive(agent_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(agent_pid), "the agent outlived its parent"
        assert "stopping" in (tmp_path / "store" / "agent.log").read_text()  # its graceful stop, not a kill
    finally:
        if parent.poll() is None:
            parent.kill()
        if "agent_pid" in locals() and _alive(agent_pid):
            os.kill(agent_pid, signal.SIGKILL)


def test_watch_parent_signals_when_the_parent_is_not_the_one_given(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    watch_parent(os.getppid() + 1, interval_s=0.01).join(5)  # not our parent: as after a re-parenting
    assert sent == [(os.getpid(), signal.SIGTERM)]

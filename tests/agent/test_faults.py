"""Faults of issue #14: the agent SIGKILLed mid-activation, and the network cut mid-upload by a TCP proxy the test
controls on loopback. Each leaves the agent serving the last good model and the upload resumable."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import devicefit
from devicefit.agent.launch import spawn_agent
from devicefit.artifact import Artifact
from devicefit.errors import DeviceError

from .conftest import write_tiny_onnx
from .test_trial_load import write_hang_onnx

HEALTH_DEADLINE_S = 1.0


def _healthy(url: str) -> bool:
    with grpc.insecure_channel(url.removeprefix("grpc://")) as ch:
        st = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_DEADLINE_S)
    return st.status == health_pb2.HealthCheckResponse.SERVING


def _trial_processes(agent_pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(agent_pid).children(recursive=True)
            if "devicefit.agent.trial_load" in " ".join(p.cmdline())]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("trial", ["trial-load", "no-trial-load"])
def test_sigkill_mid_activation(tmp_path: Path, tiny_onnx: Path, trial: str) -> None:
    """The agent is killed while it loads a new model (in its trial child, or in its own process): restarted, it
    serves the model that was active, the new one is stored but not active, no trial process outlives it."""
    slow = write_hang_onnx(tmp_path / "slow.onnx", depth=4)  # a valid model that takes seconds to load
    args = ("--trial-timeout", "600") if trial == "trial-load" else ("--no-trial-load",)
    store = tmp_path / "store"
    agent = spawn_agent(store, device_id="kill", extra_args=args)
    errors: list[BaseException] = []
    try:
        with devicefit.connect(agent.url) as dev:
            old = dev.deploy(tiny_onnx, model_id="old", progress=False)

            def _deploy() -> None:
                try:
                    with devicefit.connect(agent.url) as d:
                        d.deploy(slow, model_id="slow", progress=False)
                except BaseException as exc:  # recorded for the assertion below
                    errors.append(exc)

            th = threading.Thread(target=_deploy, daemon=True)
            th.start()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # stored, not yet active: the activation is loading it
                ids = {m["model_id"] for m in dev.transport.list_models()["models"]}
                if "slow" in ids and (trial == "no-trial-load" or _trial_processes(agent.pid)):
                    break
                time.sleep(0.05)
            else:
                pytest.fail("the slow model was never being activated")
            time.sleep(0.3)
            assert dev.transport.list_models()["active_sha256"] == old.sha256  # still loading
            trials = _trial_processes(agent.pid)
            assert len(trials) == (2 if trial == "trial-load" else 0)  # the fork server and its trial child
        agent.kill()
        th.join(60)
        assert errors and isinstance(errors[0], DeviceError)  # the client is told, it does not hang
        _, alive = psutil.wait_procs(trials, timeout=10)
        assert alive == []  # the fork server and its child died with the agent
    finally:
        agent.stop()
    state = json.loads((store / "state.json").read_text())
    assert old.sha256 in json.dumps(state)
    assert not list(store.rglob("*.tmp"))
    with spawn_agent(store, device_id="kill", extra_args=args) as again, devicefit.connect(again.url) as dev:
        listing = dev.transport.list_models()
        assert listing["active_sha256"] == old.sha256
        assert {m["model_id"] for m in listing["models"]} == {"old", "slow"}
        assert dev.info()["active_model_id"] == "old"
        assert dev.benchmark(runs=2, warmup=0).runs == 2
        assert _healthy(again.url)


class CuttableProxy:
    """A TCP forwarder on 127.0.0.1 to ``target_port``; after ``cut_after`` bytes from clients it drops every
    connection and refuses new ones (accepts and closes them) until :meth:`restore`. Its threads end when closed."""

    def __init__(self, target_port: int, *, cut_after: int | None) -> None:
        self.target_port, self.cut_after = target_port, cut_after
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.up = True
        self.forwarded = 0
        self.cuts = 0
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            if not self.up:
                conn.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._conns += [conn, upstream]
            threading.Thread(target=self._pump, args=(conn, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, conn, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if upstream:
                    with self._lock:
                        self.forwarded += len(data)
                        cut = self.up and self.cut_after is not None and self.forwarded >= self.cut_after
                    if cut:
                        self.cut()
                        return
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """Drop every connection; refuse new ones."""
        with self._lock:
            self.up = False
            self.cuts += 1
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self.cut_after, self.up = None, True

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self.sock.close()


def _settled_upload_state(device: Any, sha256: str, *, hold_s: float = 1.0, limit_s: float = 30.0) -> dict[str, Any]:
    """The agent's upload state once its committed offset has not moved for ``hold_s`` (bounded by ``limit_s``)."""
    deadline = time.monotonic() + limit_s
    state = device.transport.query_upload(sha256)
    while time.monotonic() < deadline:
        time.sleep(hold_s)
        again = device.transport.query_upload(sha256)
        if again["committed_offset"] == state["committed_offset"] and again["committed_offset"] > 0:
            return dict(again)
        state = again
    raise AssertionError(f"the upload's committed offset did not settle in {limit_s} s: {state}")


@pytest.mark.timeout(180)
def test_network_cut_mid_upload_then_resume(tmp_path: Path, tiny_onnx: Path) -> None:
    big = write_tiny_onnx(tmp_path / "big_text.onnx", vocab=50_000, hidden=64)
    size = big.stat().st_size
    assert size > 12_000_000
    art = Artifact.from_file(big, model_id="big")
    with spawn_agent(tmp_path / "store", device_id="cut", extra_args=("--commit-every-mib", "1")) as agent:
        with devicefit.connect(agent.url) as direct:
            old = direct.deploy(tiny_onnx, model_id="old", progress=False)
        port = int(agent.url.rsplit(":", 1)[1])
        proxy = CuttableProxy(port, cut_after=5 * 1024 * 1024)
        try:
            via = f"grpc://127.0.0.1:{proxy.port}"
            with devicefit.connect(via, timeout=30) as dev, pytest.raises(DeviceError):
                dev.deploy(art, progress=False)
            assert proxy.cuts == 1 and not proxy.up
            with devicefit.connect(agent.url) as direct:  # the agent itself is fine, serving the old model
                assert _healthy(agent.url)
                assert direct.transport.list_models()["active_sha256"] == old.sha256
                assert direct.benchmark(runs=2, warmup=0).runs == 2
                # the client sees the cut before the agent's stream handler does: the agent commits what arrived
                # once the stream pauses (commit_interval_s, 0.5 s) or its handler ends; read the offset once it
                # holds still for longer than that
                state = _settled_upload_state(direct, art.manifest.sha256)
            committed = int(state["committed_offset"])
            assert state["exists"] and 1024 * 1024 <= committed <= 5 * 1024 * 1024
            proxy.restore()
            with devicefit.connect(via, timeout=60) as dev:
                res = dev.deploy(art, progress=False)
            assert res.resumed_from == committed and res.bytes_sent == size - committed
            assert res.active and res.sha256 == art.manifest.sha256
        finally:
            proxy.close()
        with devicefit.connect(agent.url) as direct:
            assert direct.transport.list_models()["active_sha256"] == art.manifest.sha256
            assert direct.benchmark(runs=2, warmup=0).runs == 2

"""Fleet fixtures: real brokers (Mosquitto started on a free loopback port, amqtt in-process), agent processes
that dial out to them, tiny ONNX models. Everything started here is stopped by PID at the end."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devicefit.agent.launch import AgentProcess
from devicefit.fleet import Fleet
from devicefit.transport.broker import EmbeddedBroker
from devicefit.transport.mosquitto import INSTALL, Mosquitto, mosquitto_binary

_spec = importlib.util.spec_from_file_location("agent_tiny_models", Path(__file__).resolve().parents[1] / "agent" / "conftest.py")
assert _spec is not None and _spec.loader is not None
_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_models)
write_tiny_onnx = _models.write_tiny_onnx  # the agent tests' tiny ONNX model builder

FLEET = "lab"
#: agent processes of the shared e2e fleet (one per broker)
N_FLEET_AGENTS = 20


def spawn_mqtt_agents(url: str, root: Path, n: int, *, fleet: str = FLEET, grpc_too: bool = False,
                      prefix: str = "dev") -> list[AgentProcess]:
    """``n`` agents in separate processes (started in parallel), tagged ring=canary for the first two."""
    def one(i: int) -> AgentProcess:
        tags = ("--tag", f"ring={'canary' if i < 2 else 'main'}", "--tag", f"idx={i}")
        return AgentProcess(root / f"{prefix}{i:03d}", device_id=f"{prefix}{i:03d}",
                            address="127.0.0.1:0" if grpc_too else None,
                            extra_args=("--mqtt", url, "--fleet", fleet, *tags), start_timeout=120)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, range(n)))


def stop_all(agents: list[AgentProcess]) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda a: a.stop(), agents))


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    if mosquitto_binary() is None:
        pytest.skip(f"mosquitto is not installed: {INSTALL}")
    with Mosquitto(tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "v1": write_tiny_onnx(d / "v1.onnx", hidden=32, seed=1),
        "v2": write_tiny_onnx(d / "v2.onnx", hidden=32, seed=2),
        "v3": write_tiny_onnx(d / "v3.onnx", hidden=32, seed=3),
        "big": write_tiny_onnx(d / "big.onnx", hidden=256, vocab=6000, seed=4),
    }


@dataclass
class Env:
    url: str
    agents: list[AgentProcess]
    state: Path
    restart: Callable[[], None]
    tmp: Path

    def fleet(self) -> Fleet:
        return Fleet(self.url, fleet=FLEET, state=self.state)


@pytest.fixture(scope="module", params=["mosquitto", "amqtt"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp(f"fleet-{request.param}")
    holder: dict[str, Any] = {}
    if request.param == "mosquitto":
        broker = request.getfixturevalue("mosquitto")
        url, restart = broker.url, broker.restart
    else:
        holder["b"] = EmbeddedBroker()
        port = holder["b"].port

        def restart() -> None:
            holder["b"].stop()
            holder["b"] = EmbeddedBroker(port=port)

        url = holder["b"].url
    agents = spawn_mqtt_agents(url, tmp / "agents", N_FLEET_AGENTS)
    try:
        with Fleet(url, fleet=FLEET, state=tmp / "state.sqlite") as f:
            deadline = time.monotonic() + 60
            while len(f.devices(online=True)) < N_FLEET_AGENTS and time.monotonic() < deadline:
                time.sleep(0.2)
        yield Env(url, agents, tmp / "state.sqlite", restart, tmp)
    finally:
        stop_all(agents)
        if "b" in holder:
            holder["b"].stop()

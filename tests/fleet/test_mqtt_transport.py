"""One device over MQTT (embedded amqtt broker, real agent processes), the gRPC inventory fleet, and the CLI."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devicefit.agent.launch import AgentProcess, spawn_agent
from devicefit.errors import UserInputError
from devicefit.fleet import Fleet, Gate
from devicefit.protos.devicefit.v1 import agent_pb2
from devicefit.protos.manifest import sha256_file
from devicefit.protos.topics import BrokerUrl, check_name, device_topic
from devicefit.transport import open_transport
from devicefit.transport.broker import EmbeddedBroker

FLEET = "unit"


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    pytest.importorskip("amqtt")
    with EmbeddedBroker() as b:
        yield b


def test_broker_urls_and_topic_levels() -> None:
    u = BrokerUrl.parse("mqtts://al%40ice:s3cret@broker.local/plant-a/dev-1?protocol=5")
    assert (u.host, u.port, u.tls, u.username, u.password, u.fleet, u.device_id, u.mqtt5) == (
        "broker.local", 8883, True, "al@ice", "s3cret", "plant-a", "dev-1", True)
    assert BrokerUrl.parse("mqtt://127.0.0.1").port == 1883
    assert device_topic("plant-a", "dev-1", "req") == "devicefit/v1/plant-a/dev-1/req"
    for bad in ("a/b", "+", "#", "", "artifacts"):
        with pytest.raises(UserInputError):
            check_name("device id", bad)
    with pytest.raises(UserInputError):
        BrokerUrl.parse("grpc://x:1")


def test_one_process_serves_grpc_and_mqtt_with_one_store(broker: EmbeddedBroker, tmp_path: Path,
                                                          models: dict[str, Path]) -> None:
    with AgentProcess(tmp_path / "a", device_id="both", extra_args=("--mqtt", broker.url, "--fleet", FLEET)) as a:
        assert a.url.startswith("grpc://")
        grpc_dev = open_transport(a.url)
        mqtt_dev = open_transport(f"{broker.url}/{FLEET}/both")
        try:
            from devicefit.protos.manifest import Manifest

            res = mqtt_dev.upload(models["v1"], Manifest.for_file(models["v1"]))
            assert res["activated"] and res["sha256"] == sha256_file(models["v1"])
            assert grpc_dev.list_models()["active_sha256"] == res["sha256"]
            report = mqtt_dev.benchmark(None, runs=5)
            assert report.source == "device:both" and report.p50_ms > 0
            assert mqtt_dev.info()["device_id"] == "both"
        finally:
            grpc_dev.close()
            mqtt_dev.close()


def test_a_redelivered_request_is_applied_once(broker: EmbeddedBroker, tmp_path: Path,
                                               models: dict[str, Path]) -> None:
    from devicefit.protos.manifest import Manifest
    from devicefit.transport.mqtt_transport import MqttTransport

    with AgentProcess(tmp_path / "a", device_id="once", address=None,
                      extra_args=("--mqtt", broker.url, "--fleet", FLEET)):
        t = MqttTransport(f"{broker.url}/{FLEET}/once")
        try:
            for name in ("v1", "v2", "v3"):
                t.upload(models[name], Manifest.for_file(models[name]))
            rid, first = t.host.send("once", "Rollback", agent_pb2.RollbackRequest())
            first.result(30)
            _, again = t.host.send("once", "Rollback", agent_pb2.RollbackRequest(), request_id=rid)  # a redelivery
            answer = agent_pb2.ModelOpResult.FromString(again.result(30))
            assert answer.active_sha256 == sha256_file(models["v2"])  # the cached answer
            assert t.list_models()["active_sha256"] == sha256_file(models["v2"])  # stepped back once, not twice
        finally:
            t.close()


def test_grpc_inventory_fleet_rolls_out_without_a_broker(tmp_path: Path, models: dict[str, Path]) -> None:
    agents = [spawn_agent(tmp_path / f"g{i}", device_id=f"g{i}") for i in range(2)]
    try:
        with Fleet([a.url for a in agents], state=tmp_path / "state.sqlite") as fleet:
            assert [d.device_id for d in fleet.devices(online=True)] == ["g0", "g1"]
            r = fleet.rollout(models["v1"], waves=[0.5, 1.0], gate=Gate(max_p90_ms=500.0), runs=5)
            assert r.state == "succeeded" and [d.state for d in r.devices] == ["done", "done"]
            assert [w["host_bytes"] for w in r.wave_rows] == [models["v1"].stat().st_size] * 2
            assert {d.active_sha256 for d in fleet.devices()} == {sha256_file(models["v1"])}
    finally:
        for a in agents:
            a.stop()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devicefit.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_broker_fleet_ls_and_fleet_bench(tmp_path: Path, models: dict[str, Path]) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "devicefit.cli", "broker", "--port", "0"], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        m = re.search(r"listening on (mqtt://\S+)", proc.stdout.readline())
        assert m, "the broker printed no address"
        url = m.group(1)
        with AgentProcess(tmp_path / "a", device_id="cli0", address=None,
                          extra_args=("--mqtt", url, "--fleet", FLEET, "--tag", "site=x")):
            ls = _cli("fleet", "ls", "--broker", url, "--fleet", FLEET, "--select", "site=x", "--json")
            assert ls.returncode == 0, ls.stderr
            devs = json.loads(ls.stdout)["devices"]
            assert [(d["device_id"], d["online"], d["tags"]) for d in devs] == [("cli0", True, {"site": "x"})]
            bench = _cli("bench", str(models["v1"]), "--fleet", FLEET, "--broker", url, "--runs", "5", "--json")
            assert bench.returncode == 0, bench.stderr
            out = json.loads(bench.stdout)
            assert out["failed"] == 0 and out["devices"][0]["device_id"] == "cli0"
            assert out["distribution"]["p50_ms"]["median"] > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_mqtt5_on_mosquitto_carries_response_topic_too(mosquitto: object, tmp_path: Path,
                                                      models: dict[str, Path]) -> None:
    """``?protocol=5``: both sides speak MQTT 5 (the request also carries response-topic / correlation-data)."""
    from devicefit.protos.manifest import Manifest

    url = f"{mosquitto.url}"  # type: ignore[attr-defined]
    with AgentProcess(tmp_path / "a", device_id="five", address=None,
                      extra_args=("--mqtt", f"{url}?protocol=5", "--fleet", FLEET)):
        t = open_transport(f"{url}/{FLEET}/five?protocol=5")
        try:
            res = t.upload(models["v1"], Manifest.for_file(models["v1"]))
            assert res["activated"] and t.benchmark(None, runs=3).p50_ms > 0
        finally:
            t.close()

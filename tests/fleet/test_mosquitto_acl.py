"""The shipped Mosquitto ACL (devicefit.fleet.acl) against a real Mosquitto: a device authenticated as A cannot
read or publish B's topics; anonymous clients and wrong passwords are refused."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from devicefit.fleet.acl import write_acl
from devicefit.transport.mosquitto import Mosquitto, mosquitto_binary

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed")]
USERS = {"host": "host-secret-1", "dev-a": "a-secret-1", "dev-b": "b-secret-1"}
F = "devicefit/v1/plant"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    d = tmp_path_factory.mktemp("mosq")
    with Mosquitto(d, users=USERS, acl_file=write_acl(d / "acl")) as m:
        yield m


class Client:
    """A paho client that records what it receives."""

    def __init__(self, broker: Mosquitto, user: str | None, password: str | None, subs: list[str] = ()) -> None:  # type: ignore[assignment]
        self.got: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.rc: queue.Queue[int] = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-{time.monotonic_ns()}")
        if user:
            self.c.username_pw_set(user, password)
        self.c.on_message = lambda c, u, msg: self.got.put((msg.topic, msg.payload))
        self.c.on_connect = lambda c, u, flags, rc, props: self.rc.put(int(rc.value))
        self.c.connect("127.0.0.1", broker.port)
        self.c.loop_start()
        self.connect_rc = self.rc.get(timeout=10)
        for s in subs:
            self.c.subscribe(s, qos=1)
        time.sleep(0.3)

    def publish(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(5)

    def received(self, wait: float = 1.0) -> list[tuple[str, bytes]]:
        time.sleep(wait)
        out = []
        while not self.got.empty():
            out.append(self.got.get())
        return out

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def test_device_a_cannot_read_or_write_device_b(broker: Mosquitto) -> None:
    host = Client(broker, "host", USERS["host"], [f"{F}/+/status", f"{F}/hosts/h1/reply"])
    a = Client(broker, "dev-a", USERS["dev-a"], [f"{F}/dev-b/req", f"{F}/dev-b/chunks", f"{F}/#", f"{F}/dev-a/req"])
    b = Client(broker, "dev-b", USERS["dev-b"], [f"{F}/dev-b/req"])
    try:
        assert (host.connect_rc, a.connect_rc, b.connect_rc) == (0, 0, 0)
        host.publish(f"{F}/dev-b/req", b"for-b")
        host.publish(f"{F}/dev-a/req", b"for-a")
        assert b.received() == [(f"{F}/dev-b/req", b"for-b")]
        assert a.received(0.2) == [(f"{F}/dev-a/req", b"for-a")]  # its own topic only, not B's
        a.publish(f"{F}/dev-b/status", b"forged")  # A cannot speak for B
        a.publish(f"{F}/dev-b/req", b"forged")
        a.publish(f"{F}/dev-a/status", b"online")  # its own status: allowed
        a.publish(f"{F}/hosts/h1/reply", b"answer")
        assert sorted(host.received()) == [(f"{F}/dev-a/status", b"online"), (f"{F}/hosts/h1/reply", b"answer")]
        assert b.received(0.2) == []
    finally:
        for c in (host, a, b):
            c.close()


def test_anonymous_and_wrong_password_are_refused(broker: Mosquitto) -> None:
    assert Client(broker, None, None).connect_rc != 0
    assert Client(broker, "dev-a", "wrong").connect_rc != 0


def test_acl_file_text(tmp_path: Path) -> None:
    text = write_acl(tmp_path / "acl", host_user="ops").read_text()
    assert "pattern read devicefit/v1/+/%u/req" in text and "user ops" in text


def test_agent_and_host_over_mqtts_with_passwords_and_the_acl(tmp_path: Path) -> None:
    import devicefit
    from devicefit.agent.launch import AgentProcess
    from devicefit.cli.certs import init_certs

    init_certs(tmp_path / "certs", ["broker"])
    c = tmp_path / "certs"
    with Mosquitto(tmp_path / "mosq", users=USERS, acl_file=write_acl(tmp_path / "acl"),
                   tls=(c / "broker.pem", c / "broker.key")) as m:
        assert m.url.startswith("mqtts://")
        base = f"127.0.0.1:{m.port}"
        agent_url = f"mqtts://dev-a:{USERS['dev-a']}@{base}?ca={c / 'ca.pem'}"
        host_url = f"mqtts://host:{USERS['host']}@{base}/plant/dev-a?ca={c / 'ca.pem'}"
        with AgentProcess(tmp_path / "a", device_id="dev-a", address=None,
                          extra_args=("--mqtt", agent_url, "--fleet", "plant"), start_timeout=60), \
                devicefit.connect(host_url) as dev:
            assert dev.info()["device_id"] == "dev-a"

"""The host's connection to an MQTT broker: requests to devices correlated by request id, fleet presence.

One paho-mqtt 2.x client per host process and fleet (MQTT 3.1.1 unless the URL asks for ``?protocol=5``, in
which case the reply topic and request id also travel as MQTT 5 response-topic / correlation-data). Every
request is an ``Envelope`` published QoS 1 on the device's ``req`` topic; the answer arrives on this client's
reply topic. A request whose answer does not come is re-published with the same request id (the agent
answers a duplicate from its cache, never applies it twice); a device whose retained status says offline
fails its pending requests at once. paho reconnects with backoff (0.5 s .. 10 s) and re-subscribes here.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devicefit.errors import DeviceError
from devicefit.protos import topics
from devicefit.protos.devicefit.v1 import mqtt_pb2
from devicefit.protos.schema import stamp


class MqttHost:
    """A connected host client of one fleet on one broker (thread-safe)."""

    def __init__(self, url: str, *, fleet: str | None = None, connect_timeout: float = 10.0) -> None:
        self.broker = topics.BrokerUrl.parse(url)
        name = fleet or self.broker.fleet
        if not name:
            raise DeviceError(f"no fleet named for broker {self.broker.base}", "pass fleet=NAME or mqtt://HOST:PORT/FLEET")
        self.fleet = topics.check_name("fleet", name)
        self.client_id = f"devicefit-host-{uuid.uuid4().hex[:12]}"
        self.reply = topics.reply_topic(self.fleet, self.client_id)
        self.statuses: dict[str, mqtt_pb2.DeviceStatus] = {}
        #: payload bytes this client published on artifact / chunk topics (what a transfer cost the host)
        self.bytes_published = 0
        #: request id -> (device id, future of the answer, topic, payload, when last published)
        self._pending: dict[str, tuple[str, Future[bytes], str, bytes, float]] = {}
        self._lock = threading.Lock()
        self._status_event = threading.Condition(self._lock)
        self.connected = threading.Event()
        v5 = self.broker.mqtt5
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, clean_session=None if v5 else True)
        if self.broker.username:
            c.username_pw_set(self.broker.username, self.broker.password)
        if self.broker.tls:
            c.tls_set(ca_certs=self.broker.ca_file)
        c.reconnect_delay_set(min_delay=0.5, max_delay=10)  # type: ignore[arg-type]
        c.max_inflight_messages_set(64)
        c.max_queued_messages_set(0)
        c.on_connect, c.on_message, c.on_disconnect = self._on_connect, self._on_message, self._on_disconnect
        self.client = c
        c.connect_async(self.broker.host, self.broker.port, keepalive=15)
        c.loop_start()
        if not self.connected.wait(connect_timeout):
            self.close()
            raise DeviceError(
                f"broker unreachable at {self.broker.base}: no connection within {connect_timeout:g} s",
                "start one (`devicefit broker`), or check the URL and credentials",
            )

    # ---- connection --------------------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            return
        client.subscribe([(self.reply, 1), (topics.status_wildcard(self.fleet), 1)])
        self.connected.set()
        self._republish(lambda dev: True)  # requests lost while the broker was away

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        with self._lock:
            for _, fut, *_ in self._pending.values():
                if not fut.done():
                    fut.set_exception(DeviceError("the host's MQTT client was closed"))
            self._pending.clear()

    # ---- presence ----------------------------------------------------------------------------------
    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.reply:
            try:
                env = mqtt_pb2.Envelope.FromString(bytes(msg.payload))
            except Exception:
                return
            with self._lock:
                entry = self._pending.pop(env.request_id, None)
            if entry is not None and not entry[1].done():
                entry[1].set_result(env.body)
            return
        if not msg.payload:
            return  # a cleared retained status
        try:
            st = mqtt_pb2.DeviceStatus.FromString(bytes(msg.payload))
        except Exception:
            return
        with self._lock:
            self.statuses[st.device_id] = st
            self._status_event.notify_all()
            failed = [(rid, p[1]) for rid, p in self._pending.items() if p[0] == st.device_id] if not st.online else []
            for rid, _ in failed:
                del self._pending[rid]
        for _, fut in failed:
            if not fut.done():
                fut.set_exception(DeviceError(f"device {st.device_id} went offline", "check the device and retry"))
        if st.online:  # (re)connected, perhaps after a broker restart that lost what was sent before its birth
            self._republish(lambda dev: dev == st.device_id)

    def _republish(self, which: Callable[[str], bool]) -> None:
        """Publish pending requests again (same request id: the agent answers a duplicate from its cache)."""
        now = time.monotonic()
        with self._lock:
            again = [(rid, p) for rid, p in self._pending.items() if which(p[0])]
            for rid, p in again:
                self._pending[rid] = (*p[:4], now)
        for _, (_, _, topic, payload, _) in again:
            self.client.publish(topic, payload, qos=1)

    def wait_for_devices(self, n: int, *, timeout: float = 30.0) -> int:
        """Wait until ``n`` devices are online (or ``timeout``); returns how many are."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while sum(s.online for s in self.statuses.values()) < n and time.monotonic() < deadline:
                self._status_event.wait(max(deadline - time.monotonic(), 0.0))
            return sum(s.online for s in self.statuses.values())

    def online(self, device_id: str) -> bool:
        with self._lock:
            st = self.statuses.get(device_id)
            return bool(st is not None and st.online)

    # ---- requests ----------------------------------------------------------------------------------
    def send(self, device_id: str, method: str, msg: Any, *, request_id: str | None = None) -> tuple[str, Future[bytes]]:
        """Publish one request; returns (request id, future of the answer's body)."""
        rid = request_id or uuid.uuid4().hex
        env = stamp(mqtt_pb2.Envelope(request_id=rid, method=method, reply_to=self.reply,
                                      body=stamp(msg).SerializeToString()))
        fut: Future[bytes] = Future()
        topic, payload = topics.device_topic(self.fleet, device_id, "req"), env.SerializeToString()
        with self._lock:
            self._pending[rid] = (device_id, fut, topic, payload, time.monotonic())
        props = None
        if self.broker.mqtt5:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic, props.CorrelationData = self.reply, rid.encode()
        self.client.publish(topic, payload, qos=1, properties=props)
        return rid, fut

    def request(self, device_id: str, method: str, msg: Any, response_type: Any, *, timeout: float = 30.0,
                attempts: int = 3) -> Any:
        """Send and wait; re-publishes (same request id) after ``timeout`` up to ``attempts`` times."""
        res = self.request_many([device_id], method, msg, response_type, timeout=timeout, attempts=attempts)[device_id]
        if isinstance(res, DeviceError):
            raise res
        return res

    def request_many(self, device_ids: Iterable[str], method: str, msg: Any, response_type: Any, *,
                     timeout: float = 30.0, attempts: int = 3) -> dict[str, Any]:
        """The same request to several devices at once: {device id: response message or DeviceError}.
        (``request`` raises the DeviceError instead of returning it.)"""
        ids = list(device_ids)
        sent = {d: self.send(d, method, msg) for d in ids}
        out: dict[str, Any] = {}
        for attempt in range(attempts):
            deadline = time.monotonic() + timeout
            for d, (rid, fut) in list(sent.items()):
                try:
                    out[d] = response_type.FromString(fut.result(max(deadline - time.monotonic(), 0.0)))
                    del sent[d]
                except DeviceError as exc:
                    out[d] = exc
                    del sent[d]
                except TimeoutError:
                    if attempt + 1 < attempts:
                        sent[d] = self.send(d, method, msg, request_id=rid)
            if not sent:
                break
        for d, (rid, _) in sent.items():
            with self._lock:
                self._pending.pop(rid, None)
            out[d] = DeviceError(
                f"device {d} did not answer {method} within {attempts} x {timeout:g} s",
                "check that its agent is connected to the broker (devicefit fleet ls)",
            )
        return out

    def publish_data(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        """Publish bulk bytes (a chunk) QoS 1, counted in :attr:`bytes_published`."""
        with self._lock:
            self.bytes_published += len(payload)
        return self.client.publish(topic, payload, qos=1)

    def drain(self, infos: list[mqtt.MQTTMessageInfo], *, timeout: float = 120.0) -> None:
        """Wait (at most ``timeout``) until the broker acknowledged ``infos``; losses are repaired later."""
        deadline = time.monotonic() + timeout
        for info in infos:
            while time.monotonic() < deadline:
                try:
                    if info.is_published():
                        break
                except (RuntimeError, ValueError):
                    break
                time.sleep(0.01)

"""The agent behind an MQTT broker: the same :class:`AgentService` handlers, reached through topics.

Devices behind NAT dial out to a broker (paho-mqtt 2.x, MQTT 3.1.1, so the embedded amqtt broker works too).
Topics are in :mod:`devicefit.protos.topics`. On every (re)connection the agent subscribes to its request and
chunk topics and publishes its retained :class:`DeviceStatus` (birth); its last will marks it offline.
paho reconnects with exponential backoff (1 s .. 30 s). Requests are QoS 1 ``Envelope`` messages: a
redelivered request id is answered from a cache of recent answers, never applied twice. Long requests run on a
small worker pool, chunks on one writer thread, so the network loop never blocks.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import paho.mqtt.client as mqtt

from devicefit.agent.service import AgentService, handler
from devicefit.agent.transfer import Transfer
from devicefit.protos import errors as E
from devicefit.protos import topics, wire
from devicefit.protos.chunks import decode_upload_chunk
from devicefit.protos.devicefit.v1 import agent_pb2, artifact_pb2, benchmark_pb2, common_pb2, mqtt_pb2
from devicefit.protos.errors import AgentError
from devicefit.protos.manifest import utc_now
from devicefit.protos.schema import stamp

log = logging.getLogger("devicefit.agent.mqtt")
#: answers kept for redelivered request ids
ANSWER_CACHE = 256


class MqttAgent:
    """Serves ``service`` on ``devicefit/v1/<fleet>/<device-id>/…`` through the broker at ``url``."""

    def __init__(
        self,
        service: AgentService,
        url: str,
        *,
        fleet: str,
        tags: Mapping[str, str] | None = None,
        profile: str = "",
        workers: int = 2,
    ) -> None:
        self.service, self.broker = service, topics.BrokerUrl.parse(url)
        self.fleet = topics.check_name("fleet", fleet)
        self.device_id = topics.check_name("device id", service.device_id)
        self.tags, self.profile = dict(tags or {}), profile
        self.req_topic = topics.device_topic(fleet, self.device_id, "req")
        self.chunks_topic = topics.device_topic(fleet, self.device_id, "chunks")
        self.status_topic = topics.device_topic(fleet, self.device_id, "status")
        self._answers: OrderedDict[str, bytes | None] = OrderedDict()
        self._lock = threading.Lock()
        self._transfers: dict[str, Transfer] = {}
        self._subacks: dict[int, threading.Event] = {}
        self._last_report: dict[str, Any] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="devicefit-mqtt")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="devicefit-chunks")
        self.connected = threading.Event()
        self._methods: dict[str, tuple[Any, Callable[[Any], Any]]] = {
            "GetInfo": (common_pb2.InfoRequest, service.info),
            "QueryUpload": (artifact_pb2.QueryUploadRequest, service.query_upload),
            "Benchmark": (benchmark_pb2.BenchmarkRequest, self._benchmark),
            "ListModels": (agent_pb2.ListModelsRequest, service.list_models),
            "Activate": (agent_pb2.ActivateRequest, service.activate),
            "Rollback": (agent_pb2.RollbackRequest, service.rollback),
            "Delete": (agent_pb2.DeleteRequest, service.delete),
            "BeginTransfer": (mqtt_pb2.BeginTransfer, self.begin_transfer),
            "FinishTransfer": (mqtt_pb2.FinishTransfer, self.finish_transfer),
        }
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"devicefit-agent-{self.fleet}-{self.device_id}",
            protocol=mqtt.MQTTv5 if self.broker.mqtt5 else mqtt.MQTTv311,
            clean_session=None if self.broker.mqtt5 else True,
        )
        if self.broker.username:
            c.username_pw_set(self.broker.username, self.broker.password)
        if self.broker.tls:
            c.tls_set(ca_certs=self.broker.ca_file)
        c.will_set(self.status_topic, self._status(online=False), qos=1, retain=True)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.max_inflight_messages_set(32)
        c.max_queued_messages_set(0)
        c.on_connect, c.on_message, c.on_subscribe = self._on_connect, self._on_message, self._on_subscribe
        c.on_disconnect = self._on_disconnect
        self.client = c

    @property
    def url(self) -> str:
        return f"{self.broker.base}/{self.fleet}/{self.device_id}"

    # ---- connection --------------------------------------------------------------------------------
    def start(self, *, timeout: float = 30.0) -> bool:
        """Connect in the background (retrying with backoff); True once connected within ``timeout``."""
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=15)
        self.client.loop_start()
        return self.connected.wait(timeout)

    def stop(self) -> None:
        """Publish offline, disconnect, and commit every partial transfer."""
        if self.connected.is_set():
            self.client.publish(self.status_topic, self._status(online=False), qos=1, retain=True).wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._writer.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for t in self._transfers.values():
                t.close()
            self._transfers.clear()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.warning("broker %s refused the connection: %s", self.broker.base, reason)
            return
        subs = [(self.req_topic, 1), (self.chunks_topic, 1)]
        with self._lock:
            subs += [(t.topic, 1) for t in self._transfers.values()]
        client.subscribe(subs)
        self.publish_status()
        log.info("connected to %s as %s", self.broker.base, self.device_id)
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()
        log.warning("disconnected from %s (%s); reconnecting", self.broker.base, reason)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        with self._lock:
            ev = self._subacks.pop(mid, None)
            if ev is None:  # acknowledged before _subscribe registered it
                self._subacks[mid] = threading.Event()
                self._subacks[mid].set()
            else:
                ev.set()

    def _subscribe(self, topic: str, *, timeout: float = 10.0) -> None:
        """Subscribe and wait for the broker's SUBACK (chunks published after our answer must reach us)."""
        rc, mid = self.client.subscribe(topic, qos=1)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            return  # not connected: _on_connect subscribes again
        with self._lock:
            ev = self._subacks.setdefault(mid, threading.Event())
        ev.wait(timeout)
        with self._lock:
            self._subacks.pop(mid, None)

    # ---- status ------------------------------------------------------------------------------------
    def _status(self, *, online: bool) -> bytes:
        active = self.service.store.active()
        return stamp(
            mqtt_pb2.DeviceStatus(
                device_id=self.device_id, fleet=self.fleet, online=online, profile=self.profile, tags=self.tags,
                agent_version=self.service.agent_version, active_model_id=active.model_id if active else "",
                active_sha256=active.sha256 if active else "", updated_at=utc_now(),
                last_report_json=json.dumps(self._last_report, sort_keys=True),
            )
        ).SerializeToString()

    def publish_status(self) -> None:
        self.client.publish(self.status_topic, self._status(online=True), qos=1, retain=True)

    # ---- messages ----------------------------------------------------------------------------------
    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.req_topic:
            self._on_request(bytes(msg.payload))
        else:  # the device's own chunks topic or a fan-out artifact topic
            self._writer.submit(self._on_chunk, bytes(msg.payload))

    def _on_request(self, payload: bytes) -> None:
        try:
            env = mqtt_pb2.Envelope.FromString(payload)
        except Exception:
            log.warning("dropped a request that is not a devicefit.v1.Envelope")
            return
        with self._lock:
            if env.request_id in self._answers:  # a redelivery: answer again, never apply twice
                answer = self._answers[env.request_id]
                if answer is not None:
                    self.client.publish(env.reply_to, answer, qos=1)
                return
            self._answers[env.request_id] = None
            while len(self._answers) > ANSWER_CACHE:
                self._answers.popitem(last=False)
        self._pool.submit(self._serve, env)

    def _serve(self, env: mqtt_pb2.Envelope) -> None:
        t0 = time.perf_counter()
        method = self._methods.get(env.method)
        if method is None:
            body = stamp(common_pb2.DeviceInfo(status=wire.error_status(
                E.INVALID_ARGUMENT, f"unknown method {env.method!r}", f"use one of {sorted(self._methods)}"))
            ).SerializeToString()
        else:
            req_type, fn = method
            try:
                req = req_type.FromString(env.body)
            except Exception:
                req = req_type()  # the handler's schema check answers SCHEMA_MISMATCH for an empty message
            body = fn(req).SerializeToString()
        answer = stamp(mqtt_pb2.Envelope(request_id=env.request_id, method=env.method, device_id=self.device_id,
                                         body=body)).SerializeToString()
        with self._lock:
            if env.request_id in self._answers:
                self._answers[env.request_id] = answer
        if env.reply_to:
            self.client.publish(env.reply_to, answer, qos=1)
        log.info("%s %s answered in %.0f ms", env.method, env.request_id[:8], (time.perf_counter() - t0) * 1e3)
        if env.method in ("Activate", "Rollback", "FinishTransfer", "Benchmark", "Delete"):
            self.publish_status()

    def _on_chunk(self, payload: bytes) -> None:
        try:
            chunk = decode_upload_chunk(payload)
            with self._lock:
                t = self._transfers.get(chunk.upload_id)
            if t is not None:
                t.on_chunk(int(chunk.offset), chunk.data, chunk.crc32)
        except Exception as exc:  # a bad chunk is missing data: it is asked for again at FinishTransfer
            log.warning("dropped a chunk: %s", exc)

    # ---- handlers ----------------------------------------------------------------------------------
    def _benchmark(self, req: benchmark_pb2.BenchmarkRequest) -> benchmark_pb2.BenchmarkReport:
        pb = self.service.benchmark(req)
        if pb.status.ok:
            self._last_report = {"model_id": pb.model_id, "sha256": pb.sha256, "p50_ms": pb.p50_ms,
                                 "p90_ms": pb.p90_ms, "peak_rss_mb": pb.peak_rss_mb}
        return pb

    def _state(self, upload_id: str, size: int) -> mqtt_pb2.TransferState:
        return mqtt_pb2.TransferState(status=wire.ok_status(), upload_id=upload_id, size_bytes=size)

    @handler(mqtt_pb2.TransferState)
    def begin_transfer(self, req: mqtt_pb2.BeginTransfer) -> mqtt_pb2.TransferState:
        m = wire.manifest_from_proto(req.manifest)
        store = self.service.store
        st = self._state(req.upload_id, m.size_bytes)
        if store.has_blob(m.sha256):
            store.add_entry(m, upload_id=req.upload_id)
            st.complete = st.already_stored = True
            st.received, st.sha256 = m.size_bytes, m.sha256
            return st
        with self._lock:
            t = self._transfers.get(req.upload_id)
        if t is None:
            topic = req.artifact_topic
            if not topic.startswith(topics.fleet_prefix(self.fleet) + "/artifacts/"):
                raise AgentError(E.INVALID_ARGUMENT, f"artifact topic {topic!r} is outside this fleet's artifacts/")
            t = Transfer(store, req.upload_id, m, topic)
            with self._lock:
                self._transfers[req.upload_id] = t
            self._subscribe(topic)
        st.received, st.resumed_from = t.received, t.resumed_from
        return st

    @handler(mqtt_pb2.TransferState)
    def finish_transfer(self, req: mqtt_pb2.FinishTransfer) -> mqtt_pb2.TransferState:
        store = self.service.store
        with self._lock:
            t = self._transfers.get(req.upload_id)
        if t is None:  # finished before (a retry after a host restart) or never begun
            info = store.upload_info(req.upload_id)
            if not info.already_stored:
                raise AgentError(E.NOT_FOUND, f"no transfer {req.upload_id} on this device", "send BeginTransfer first")
            entry = store.resolve(info.stored_sha256)
        else:
            if not t.settle():
                st = self._state(req.upload_id, t.size)
                st.received = t.received
                st.missing.extend(mqtt_pb2.ByteRange(offset=o, length=n) for o, n in t.missing())
                return st
            try:
                entry = t.finish()
            finally:
                with self._lock:
                    self._transfers.pop(req.upload_id, None)
                self.client.unsubscribe(t.topic)
                t.close()
        st = self._state(req.upload_id, entry.manifest.size_bytes)
        st.complete, st.received, st.sha256 = True, entry.manifest.size_bytes, entry.sha256
        if req.activate and store.active_sha != entry.sha256:
            loaded = self.service.activate_entry(entry)
            st.activated, st.load_ms, st.first_run_ms = True, loaded.load_ms, loaded.first_run_ms
        elif req.activate:
            st.activated = True
        return st

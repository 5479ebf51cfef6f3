"""How a fleet reaches its devices: through an MQTT broker (presence from retained status, artifacts fanned out
once per wave) or through a static inventory of ``grpc://`` URLs (one upload per device)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from devicefit.errors import DevicefitError
from devicefit.protos.manifest import Manifest
from devicefit.transport import Transport, open_transport


@dataclass(frozen=True)
class FleetDevice:
    """One device as the fleet sees it (from its retained status, or from GetInfo for gRPC)."""

    device_id: str
    online: bool
    url: str
    tags: dict[str, str] = field(default_factory=dict)
    profile: str = ""
    agent_version: str = ""
    active_model_id: str = ""
    active_sha256: str = ""
    last_report: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Delivery:
    """The result of sending an artifact to one device."""

    ok: bool
    error: str = ""
    already_stored: bool = False


class Backend(Protocol):
    target: str
    fleet: str

    def devices(self) -> list[FleetDevice]: ...

    def online(self, device_id: str) -> bool: ...

    def transport(self, device_id: str) -> Transport: ...

    def deliver(self, device_ids: Sequence[str], path: Path, manifest: Manifest) -> tuple[dict[str, Delivery], int]:
        """Store (not activate) the artifact on the devices; returns outcomes and host bytes sent."""
        ...

    def close(self) -> None: ...


class MqttBackend:
    """Devices behind a broker: ``mqtt[s]://[user:pass@]host:port`` and a fleet name."""

    def __init__(self, url: str, *, fleet: str, connect_timeout: float = 10.0, settle_s: float = 1.0) -> None:
        from devicefit.transport.mqtt_client import MqttHost

        self.host = MqttHost(url, fleet=fleet, connect_timeout=connect_timeout)
        self.target, self.fleet = self.host.broker.base, self.host.fleet
        # retained statuses arrive right after the subscription: give them a moment
        self.host.wait_for_devices(1 << 30, timeout=settle_s)
        self._transports: dict[str, Transport] = {}

    def devices(self) -> list[FleetDevice]:
        with self.host._lock:
            statuses = list(self.host.statuses.values())
        return sorted(
            (FleetDevice(
                device_id=s.device_id, online=s.online, url=f"{self.target}/{self.fleet}/{s.device_id}",
                tags=dict(s.tags), profile=s.profile, agent_version=s.agent_version,
                active_model_id=s.active_model_id, active_sha256=s.active_sha256,
                last_report=json.loads(s.last_report_json or "{}"),
            ) for s in statuses),
            key=lambda d: d.device_id,
        )

    def online(self, device_id: str) -> bool:
        return self.host.online(device_id)

    def transport(self, device_id: str) -> Transport:
        from devicefit.transport.mqtt_transport import MqttTransport

        if device_id not in self._transports:
            self._transports[device_id] = MqttTransport(f"{self.target}/{self.fleet}/{device_id}", host=self.host)
        return self._transports[device_id]

    def deliver(self, device_ids: Sequence[str], path: Path, manifest: Manifest) -> tuple[dict[str, Delivery], int]:
        from devicefit.transport.mqtt_fanout import send_artifact

        before = self.host.bytes_published
        outcomes = send_artifact(self.host, device_ids, path, manifest, activate=False)
        return ({d: Delivery(o.ok, o.error, o.already_stored) for d, o in outcomes.items()},
                self.host.bytes_published - before)

    def close(self) -> None:
        self.host.close()


class GrpcBackend:
    """A static inventory of ``grpc://`` agents (no broker): device ids come from each agent's GetInfo."""

    def __init__(self, urls: Sequence[str], *, fleet: str = "inventory", connect_timeout: float = 5.0) -> None:
        self.target, self.fleet = ",".join(urls), fleet
        self.urls: dict[str, str] = {}
        self._transports: dict[str, Transport] = {}
        self._info: dict[str, dict[str, Any]] = {}
        for url in urls:
            try:
                t = open_transport(url, connect_timeout=connect_timeout)
                info = t.info()
            except DevicefitError:
                self.urls[url] = url  # unreachable: listed offline under its URL
                continue
            dev = str(info["device_id"])
            self.urls[dev], self._transports[dev], self._info[dev] = url, t, info

    def devices(self) -> list[FleetDevice]:
        out = []
        for dev, url in sorted(self.urls.items()):
            online = dev in self._transports
            active: dict[str, Any] = {}
            if online:
                try:
                    listing = self._transports[dev].list_models()
                    active = next((m for m in listing["models"] if m["active"]), {})
                except DevicefitError:
                    online = False
            out.append(FleetDevice(device_id=dev, online=online, url=url,
                                   agent_version=str(self._info.get(dev, {}).get("agent_version", "")),
                                   active_model_id=str(active.get("model_id", "")),
                                   active_sha256=str(active.get("sha256", ""))))
        return out

    def online(self, device_id: str) -> bool:
        if device_id not in self._transports:
            return False
        try:
            self._transports[device_id].list_models()
            return True
        except DevicefitError:
            return False

    def transport(self, device_id: str) -> Transport:
        return self._transports[device_id]

    def deliver(self, device_ids: Sequence[str], path: Path, manifest: Manifest) -> tuple[dict[str, Delivery], int]:
        def one(dev: str) -> tuple[Delivery, int]:
            try:
                res = self._transports[dev].upload(path, manifest, activate=False)
            except (DevicefitError, KeyError) as exc:
                return Delivery(False, str(getattr(exc, "problem", exc))), 0
            return Delivery(True, already_stored=bool(res["already_stored"])), int(res["bytes_sent"])

        with ThreadPoolExecutor(max_workers=4) as pool:
            results = dict(zip(device_ids, pool.map(one, device_ids), strict=True))
        return {d: r for d, (r, _) in results.items()}, sum(n for _, n in results.values())

    def close(self) -> None:
        for t in self._transports.values():
            t.close()


"""MQTT topic names of the devicefit.v1 contract, and the parts of an ``mqtt://`` URL both sides read.

    devicefit/v1/<fleet>/<device-id>/req        requests to one device (Envelope)
    devicefit/v1/<fleet>/<device-id>/chunks     re-sent byte ranges of a transfer, for this device only (UploadChunk)
    devicefit/v1/<fleet>/<device-id>/status     retained DeviceStatus (birth; last will: online=false)
    devicefit/v1/<fleet>/artifacts/<upload-id>  chunks of one transfer, published once for a whole wave (UploadChunk)
    devicefit/v1/<fleet>/hosts/<client-id>/reply answers to one host client (Envelope)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from devicefit.protos.errors import UserInputError

ROOT = "devicefit/v1"
DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
#: fleet names, device ids and upload ids are single topic levels: no '/', '+', '#'
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: reserved level names under a fleet (a device may not use them as its id)
RESERVED = ("artifacts", "hosts")


def check_name(kind: str, value: str) -> str:
    """``value`` when it is a valid single topic level (fleet, device id), else UserInputError."""
    if not _NAME_RE.match(value or "") or value in RESERVED:
        raise UserInputError(
            f"{kind} {value!r} is not a valid MQTT topic level",
            "use 1-128 characters from A-Z a-z 0-9 . _ - (starting with a letter or digit; not "
            + "/".join(RESERVED) + ")",
        )
    return value


def fleet_prefix(fleet: str) -> str:
    return f"{ROOT}/{check_name('fleet', fleet)}"


def device_topic(fleet: str, device_id: str, leaf: str) -> str:
    """``devicefit/v1/<fleet>/<device-id>/<leaf>`` (leaf: req, chunks, status)."""
    return f"{fleet_prefix(fleet)}/{check_name('device id', device_id)}/{leaf}"


def status_wildcard(fleet: str) -> str:
    return f"{fleet_prefix(fleet)}/+/status"


def artifact_topic(fleet: str, upload_id: str) -> str:
    return f"{fleet_prefix(fleet)}/artifacts/{upload_id}"


def reply_topic(fleet: str, client_id: str) -> str:
    return f"{fleet_prefix(fleet)}/hosts/{client_id}/reply"


def device_of(topic: str) -> str:
    """The device id of a ``devicefit/v1/<fleet>/<device-id>/<leaf>`` topic."""
    return topic.split("/")[3]


@dataclass(frozen=True)
class BrokerUrl:
    """``mqtt[s]://[user[:password]@]host[:port][/fleet[/device-id]]`` split into its parts."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None
    fleet: str | None = None
    device_id: str | None = None
    mqtt5: bool = False
    #: ``?ca=PATH``: the CA certificate that signed the broker's (mqtts; default: the system's CAs)
    ca_file: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise UserInputError(
                f"broker URL {url!r} is not mqtt://HOST[:PORT] or mqtts://HOST[:PORT]",
                "pass e.g. mqtt://127.0.0.1:1883 (or mqtt://HOST:PORT/FLEET/DEVICE-ID for one device)",
            )
        tls = parts.scheme == "mqtts"
        levels = [unquote(p) for p in parts.path.strip("/").split("/") if p]
        if len(levels) > 2:
            raise UserInputError(f"broker URL {url!r} has too many path levels", "use mqtt://HOST:PORT/FLEET/DEVICE-ID")
        fleet = check_name("fleet", levels[0]) if levels else None
        device = check_name("device id", levels[1]) if len(levels) > 1 else None
        query = parse_qs(parts.query)
        return cls(
            host=parts.hostname, port=parts.port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT), tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            fleet=fleet, device_id=device, mqtt5=query.get("protocol", [""])[0] in ("5", "mqtt5"),
            ca_file=query.get("ca", [None])[0],
        )

    @property
    def base(self) -> str:
        """The broker part alone, without credentials or path (for messages and logs)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

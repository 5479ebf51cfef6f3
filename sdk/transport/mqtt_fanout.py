"""Send one artifact to many devices through a broker, publishing each chunk once (the broker fans out).

1. ``BeginTransfer`` to every target: each subscribes to ``devicefit/v1/<fleet>/artifacts/<upload-id>`` and
   answers with what it already holds (``already_stored``, or the committed offset of an earlier attempt).
2. The chunks (``UploadChunk``: offset, data, crc32; ≤ 256 KiB) from the smallest offset anyone still needs
   are published once on that topic — host bytes ≈ 1× the artifact for the whole wave.
3. ``FinishTransfer`` to every target that needed bytes: the device verifies and stores the file (size,
   sha256, signature, with the store's own upload code), or names exactly the ranges it missed; those are
   re-published on that device's own ``chunks`` topic, and step 3 repeats (a few rounds at most).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import paho.mqtt.client as mqtt

from devicefit.errors import DeviceError
from devicefit.protos import topics, wire
from devicefit.protos.chunks import encode_upload_chunk
from devicefit.protos.devicefit.v1 import mqtt_pb2
from devicefit.protos.errors import AgentError
from devicefit.protos.manifest import Manifest
from devicefit.protos.schema import SCHEMA_VERSION
from devicefit.transport.mqtt_client import MqttHost

#: MQTT chunk size: the issue's bound (≤ 256 KiB) keeps every broker's default packet limits happy
CHUNK = 256 * 1024


@dataclass
class TransferOutcome:
    """What happened on one device."""

    device_id: str
    ok: bool
    sha256: str = ""
    already_stored: bool = False
    resumed_from: int = 0
    activated: bool = False
    load_ms: float = 0.0
    error: str = ""


def upload_id_for(manifest: Manifest) -> str:
    """The transfer id of an artifact: the same for every device and every attempt (so transfers resume)."""
    return f"fanout-{manifest.sha256[:48]}"


def _ranges(start: int, end: int, chunk: int) -> Iterable[tuple[int, int]]:
    for off in range(start, end, chunk):
        yield off, min(chunk, end - off)


def _publish_range(host: MqttHost, topic: str, f: BinaryIO, upload_id: str, offset: int, length: int,
                   chunk: int, progress: Callable[[int, int], None] | None = None) -> list[mqtt.MQTTMessageInfo]:
    infos = []
    for off, n in _ranges(offset, offset + length, chunk):
        f.seek(off)
        data = f.read(n)
        msg = encode_upload_chunk(schema_version=SCHEMA_VERSION, upload_id=upload_id, offset=off, data=data,
                                  crc32=zlib.crc32(data))
        infos.append(host.publish_data(topic, msg))
        if progress is not None:
            progress(off + n, offset + length)
    return infos


def send_artifact(
    host: MqttHost,
    device_ids: Iterable[str],
    path: str | Path,
    manifest: Manifest,
    *,
    activate: bool = False,
    chunk_size: int = CHUNK,
    rounds: int = 6,
    timeout: float = 60.0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, TransferOutcome]:
    """Transfer ``path`` to ``device_ids`` (fan-out + per-device repair); one outcome per device."""
    if not 0 < chunk_size <= CHUNK:
        raise DeviceError(f"MQTT chunk size {chunk_size} is outside 1 B .. 256 KiB", f"pass at most {CHUNK}")
    ids = list(dict.fromkeys(device_ids))
    upload_id = upload_id_for(manifest)
    topic = topics.artifact_topic(host.fleet, upload_id)
    out = {d: TransferOutcome(d, ok=False) for d in ids}
    begin = mqtt_pb2.BeginTransfer(upload_id=upload_id, manifest=wire.manifest_to_proto(manifest),
                                   artifact_topic=topic)
    need: dict[str, int] = {}
    for d, res in host.request_many(ids, "BeginTransfer", begin, mqtt_pb2.TransferState, timeout=timeout).items():
        if _failed(out[d], res):
            continue
        out[d].resumed_from = int(res.received)
        if res.complete:
            out[d].already_stored = res.already_stored
        need[d] = int(res.received) if not res.complete else manifest.size_bytes
    size = manifest.size_bytes
    pending = [d for d, rec in need.items() if rec < size]
    finishing = list(need)
    with open(path, "rb") as f:
        if pending:
            start = min(need[d] for d in pending) // chunk_size * chunk_size
            infos = _publish_range(host, topic, f, upload_id, start, size - start, chunk_size, progress)
            host.drain(infos)
        finish = mqtt_pb2.FinishTransfer(upload_id=upload_id, activate=activate)
        for _ in range(rounds):
            if not finishing:
                break
            again = []
            answers = host.request_many(finishing, "FinishTransfer", finish, mqtt_pb2.TransferState,
                                        timeout=timeout)
            repairs: list[mqtt.MQTTMessageInfo] = []
            for d, res in answers.items():
                if _failed(out[d], res):
                    continue
                if res.complete:
                    o = out[d]
                    o.ok, o.sha256, o.activated, o.load_ms, o.error = True, res.sha256, res.activated, res.load_ms, ""
                    continue
                again.append(d)
                dev_topic = topics.device_topic(host.fleet, d, "chunks")
                for r in res.missing:
                    repairs += _publish_range(host, dev_topic, f, upload_id, int(r.offset), int(r.length), chunk_size)
                out[d].error = f"incomplete: {len(res.missing)} range(s) missing"
            host.drain(repairs)
            finishing = again
    return out


def _failed(o: TransferOutcome, res: object) -> bool:
    """Record a transport error or a refused request on ``o``; True if there was one."""
    if isinstance(res, DeviceError):
        o.ok, o.error = False, res.problem
        return True
    try:
        wire.raise_for_status(res, where=f"transfer to {o.device_id}")
    except AgentError as exc:
        o.ok, o.error = False, f"{exc.code}: {exc.problem}"
        return True
    return False

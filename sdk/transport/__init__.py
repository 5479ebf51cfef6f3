"""Transports between the host and device agents, picked by URL scheme.

``open_transport("grpc://pi.local:50051")`` returns a :class:`Transport`; ``mqtt://BROKER/FLEET/DEVICE`` (and
``mqtts://``) is registered below with :func:`register_transport` — nothing else changes. Every transport carries the same
devicefit.v1 messages and returns the same Python objects.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np

from devicefit.errors import UserInputError
from devicefit.protos.manifest import Manifest
from devicefit.protos.report import BenchReport

#: progress(bytes_done, bytes_total)
ProgressFn = Callable[[int, int], None]

DEFAULT_CHUNK = 512 * 1024
MIN_CHUNK = 256 * 1024
MAX_CHUNK = 1024 * 1024


class Transport(Protocol):
    """What the SDK needs from a connection to one device agent."""

    url: str

    def info(self, *, measure_throughput: bool = False) -> dict[str, Any]: ...

    def upload(
        self,
        path: Path,
        manifest: Manifest,
        *,
        activate: bool = True,
        chunk_size: int = DEFAULT_CHUNK,
        progress: ProgressFn | None = None,
    ) -> dict[str, Any]:
        """Upload (resuming from the agent's committed offset); returns the agent's UploadResult as a dict."""
        ...

    def benchmark(
        self,
        model_id: str | None,
        *,
        runs: int = 50,
        warmup: int = 5,
        threads: int | None = None,
        per_node: bool = False,
        batch_size: int = 1,
        inputs: Mapping[str, np.ndarray] | None = None,
        min_seconds: float = 0.0,
    ) -> BenchReport: ...

    def list_models(self) -> dict[str, Any]: ...

    def activate(self, model_id: str) -> dict[str, Any]: ...

    def rollback(self) -> dict[str, Any]: ...

    def delete(self, model_id: str) -> dict[str, Any]: ...

    def close(self) -> None: ...


#: URL scheme -> "module:Class" (imported on first use)
TRANSPORTS: dict[str, str] = {
    "grpc": "devicefit.transport.grpc_transport:GrpcTransport",
    "grpcs": "devicefit.transport.grpc_transport:GrpcTransport",  # TLS
}


def register_transport(scheme: str, target: str) -> None:
    """Make ``scheme://…`` URLs open with ``target`` ("package.module:Class", constructed as Class(url, **kw))."""
    TRANSPORTS[scheme] = target


register_transport("mqtt", "devicefit.transport.mqtt_transport:MqttTransport")
register_transport("mqtts", "devicefit.transport.mqtt_transport:MqttTransport")


def check_chunk_size(chunk_size: int) -> int:
    if not MIN_CHUNK <= int(chunk_size) <= MAX_CHUNK:
        raise UserInputError(
            f"chunk size {chunk_size} B is outside 256 KiB-1 MiB", f"pass a chunk size in [{MIN_CHUNK}, {MAX_CHUNK}]"
        )
    return int(chunk_size)


def open_transport(url: str, **kwargs: Any) -> Transport:
    """A transport for ``url`` (``grpc://host:port``, ``mqtt://broker:port/fleet/device-id``, …)."""
    scheme = urlsplit(url).scheme
    if scheme not in TRANSPORTS:
        raise UserInputError(
            f"device URL {url!r} has scheme {scheme or '(none)'!r}, which no transport handles",
            f"use one of {', '.join(s + '://HOST:PORT' for s in sorted(TRANSPORTS))}",
        )
    mod, cls = TRANSPORTS[scheme].split(":")
    transport: Transport = getattr(importlib.import_module(mod), cls)(url, **kwargs)
    return transport

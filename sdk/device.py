"""A device agent, from the host: ``devicefit.connect("grpc://pi.local:50051") -> Device``.

    with devicefit.connect("grpc://pi.local:50051") as dev:
        print(dev.info()["cores_physical"])
        dev.deploy("out/model.onnx")                   # upload (resumable), verify, activate
        report = dev.benchmark(per_node=True)          # on-device BenchReport, source "device:<id>"
        dev.rollback()
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from devicefit.artifact import Artifact
from devicefit.progress import Progress
from devicefit.protos.manifest import default_model_id
from devicefit.protos.report import BenchReport
from devicefit.transport import DEFAULT_CHUNK, Transport, open_transport


@dataclass(frozen=True)
class DeployResult:
    model_id: str
    sha256: str
    size_bytes: int
    device_id: str
    active: bool
    seconds: float
    mb_per_s: float
    resumed_from: int
    bytes_sent: int
    already_stored: bool
    load_ms: float
    first_run_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Device:
    """One device agent reached through a :class:`~devicefit.transport.Transport`."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._id: str | None = None

    @property
    def url(self) -> str:
        return self.transport.url

    @property
    def id(self) -> str:
        if self._id is None:
            self._id = str(self.info()["device_id"])
        return self._id

    def info(self, *, measure_throughput: bool = False) -> dict[str, Any]:
        """Probed facts: cores, memory, ISA flags, runtimes, custom kernels, active model (+ throughput)."""
        d = self.transport.info(measure_throughput=measure_throughput)
        self._id = str(d["device_id"])
        return d

    def deploy(
        self,
        path: str | Path | Artifact,
        *,
        progress: bool | Callable[[int, int], None] = True,
        model_id: str | None = None,
        activate: bool = True,
        chunk_size: int = DEFAULT_CHUNK,
    ) -> DeployResult:
        """Upload a model (resuming a partial upload), have the agent verify it and (by default) activate it.

        A bare file is hashed while it streams when the transport can (gRPC: ``upload_file``); an
        :class:`Artifact` brings its sha256, so an agent that already stores it receives nothing, and the file
        is not hashed again here (the agent hashes what it receives and rejects it unless the digest matches).
        The agent keeps the previously active model until the new one has loaded and run once.
        ``progress=True`` draws a progress bar on stderr; a callable receives (bytes_done, bytes_total).
        """
        upload_file = getattr(self.transport, "upload_file", None)
        t0 = time.perf_counter()
        if isinstance(path, Artifact) or upload_file is None:
            art = path if isinstance(path, Artifact) else Artifact.from_file(path, model_id=model_id)
            if model_id and art.manifest.model_id != model_id:
                art = Artifact(art.path, art.manifest.with_(model_id=model_id))
            bar = Progress.transfer(progress is True, f"deploy {art.manifest.model_id}", art.manifest.size_bytes)
            cb = progress if callable(progress) else bar
            try:
                res = self.transport.upload(art.path, art.manifest, activate=activate, chunk_size=chunk_size,
                                            progress=cb)
            finally:
                bar.close()
        else:  # a bare file: the transport hashes it while it streams (one pass, no hashing beforehand)
            p = Path(path)
            bar = Progress.transfer(progress is True, f"deploy {model_id or default_model_id(p)}",
                               p.stat().st_size if p.is_file() else 0)
            cb = progress if callable(progress) else bar
            try:
                res = upload_file(p, model_id=model_id, activate=activate, chunk_size=chunk_size, progress=cb)
            finally:
                bar.close()
        seconds = time.perf_counter() - t0
        return DeployResult(
            model_id=res["model_id"],
            sha256=res["sha256"],
            size_bytes=int(res["size_bytes"]),
            device_id=self.id,
            active=bool(res["activated"]),
            seconds=seconds,
            mb_per_s=res["bytes_sent"] / 1e6 / seconds if seconds > 0 else 0.0,
            resumed_from=int(res["resumed_from"]),
            bytes_sent=int(res["bytes_sent"]),
            already_stored=bool(res["already_stored"]),
            load_ms=float(res["load_ms"]),
            first_run_ms=float(res["first_run_ms"]),
        )

    def benchmark(
        self,
        model_id: str | None = None,
        *,
        runs: int = 50,
        warmup: int = 5,
        threads: int | None = None,
        per_node: bool = False,
        batch_size: int = 1,
        inputs: Mapping[str, np.ndarray] | None = None,
        min_seconds: float = 0.0,
    ) -> BenchReport:
        """Benchmark a stored model (None = the active one) on the device, with the runner it deploys with.

        ``min_seconds``: the time floor of the agent's measuring rule (timed runs go on past ``runs`` until
        they add up to it; :func:`devicefit.agent.benchmark.timed_runs`)."""
        return self.transport.benchmark(
            model_id, runs=runs, warmup=warmup, threads=threads, per_node=per_node, batch_size=batch_size, inputs=inputs,
            min_seconds=min_seconds,
        )

    def models(self) -> list[dict[str, Any]]:
        return list(self.transport.list_models()["models"])

    def activate(self, model_id: str) -> dict[str, Any]:
        return self.transport.activate(model_id)

    def rollback(self) -> dict[str, Any]:
        """Re-activate the previously active model (loaded and run once before the switch)."""
        return self.transport.rollback()

    def delete(self, model_id: str) -> dict[str, Any]:
        return self.transport.delete(model_id)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Device:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def connect(url: str, **kwargs: Any) -> Device:
    """Connect to a device agent (``grpc://host:port``); raises DeviceError when it is unreachable."""
    return Device(open_transport(url, **kwargs))


def deploy(path: str | Path | Artifact, *, to: str, **kwargs: Any) -> DeployResult:
    """One-shot: connect to ``to``, deploy ``path``, disconnect."""
    with connect(to) as dev:
        return dev.deploy(path, **kwargs)

"""gRPC server of the agent: the DeviceAgent service + grpc.health.v1, bounded concurrency, clean stop.

``serve_forever("127.0.0.1:50051", store_dir=...)`` prints one line with the bound address
(``devicefit agent <id> listening on grpc://HOST:PORT ...``; port 0 picks a free port; with ``mqtt=`` also
``... serving mqtt://BROKER/FLEET/ID ...`` once connected) and serves until
SIGTERM / SIGINT, then stops gracefully (in-flight RPCs get a few seconds; partial uploads are committed).
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from devicefit.agent.service import AgentService
from devicefit.agent.store import ModelStore
from devicefit.agent.trial_load import TrialLoader
from devicefit.errors import UserInputError
from devicefit.protos import errors as E
from devicefit.protos import wire
from devicefit.protos.chunks import decode_upload_chunk
from devicefit.protos.devicefit.v1 import agent_pb2_grpc, artifact_pb2, benchmark_pb2, common_pb2
from devicefit.protos.errors import AgentError
from devicefit.protos.schema import stamp

SERVICE_NAME = "devicefit.v1.DeviceAgent"
#: chunks are <= 1 MiB; nothing on the wire may exceed 4 MiB (the headroom covers manifests / tensors)
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]
log = logging.getLogger("devicefit.agent")


def _busy(response_type: Any, what: str, limit: int) -> Any:
    return stamp(response_type(status=wire.error_status(
        E.BUSY, f"the agent is already running {limit} {what} (its limit)", "retry in a moment")))


class _IdleStream:
    """Iterates a request stream; cancels the RPC when no message arrives for ``timeout_s`` (a silent client
    must not hold a worker), and then ends with AgentError(INCOMPLETE)."""

    def __init__(self, it: Iterator[Any], context: grpc.ServicerContext, timeout_s: float) -> None:
        self._it, self._context, self._timeout = it, context, timeout_s
        self._tick = threading.Event()
        self._done = threading.Event()
        self.timed_out = False
        threading.Thread(target=self._watch, name="idle-watch", daemon=True).start()

    def _watch(self) -> None:
        while not self._done.is_set():
            if not self._tick.wait(self._timeout):
                if self._done.is_set():
                    return
                self.timed_out = True
                self._context.cancel()
                return
            self._tick.clear()

    def close(self) -> None:
        """Stop watching (the handler is done with the stream)."""
        self._done.set()
        self._tick.set()

    def __iter__(self) -> Iterator[Any]:
        try:
            for msg in self._it:
                self._tick.set()
                yield msg
        except grpc.RpcError:
            if self.timed_out:
                raise AgentError(E.INCOMPLETE, f"upload stream idle for {self._timeout:g} s; it was closed",
                                 "resume it (devicefit deploy resumes automatically)") from None
            raise
        finally:
            self._done.set()
            self._tick.set()


class DeviceAgentServicer(agent_pb2_grpc.DeviceAgentServicer):
    """Maps the gRPC methods onto the transport-neutral :class:`AgentService`.

    Uploads and benchmarks are admitted through their own bounded slots (``max_uploads``, ``max_benchmarks``:
    one running + the ones waiting for it); beyond those the answer is BUSY at once, so those RPCs never hold
    more worker threads than their slots and the rest of the pool always answers health, info and lists."""

    def __init__(self, service: AgentService, *, max_uploads: int = 4, max_benchmarks: int = 2,
                 idle_timeout_s: float = 30.0) -> None:
        self.service = service
        self.max_uploads, self.max_benchmarks = max_uploads, max_benchmarks
        self._uploads = threading.BoundedSemaphore(max_uploads)
        self._benchmarks = threading.BoundedSemaphore(max_benchmarks)
        self.idle_timeout_s = idle_timeout_s

    def GetInfo(self, request: Any, context: grpc.ServicerContext) -> Any:
        if not request.measure_throughput:
            return self.service.info(request)
        if not self._benchmarks.acquire(blocking=False):
            return _busy(common_pb2.DeviceInfo, "benchmarks", self.max_benchmarks)
        try:
            return self.service.info(request)
        finally:
            self._benchmarks.release()

    def Upload(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        if not self._uploads.acquire(blocking=False):
            return _busy(artifact_pb2.UploadResult, "uploads", self.max_uploads)
        try:
            return self._upload(request_iterator, context)
        finally:
            self._uploads.release()

    def _upload(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        # once the RPC is over, hand back the chunk buffers malloc kept for reuse (see tune_allocator)
        if not context.add_callback(release_free_memory):
            release_free_memory()
        stream = _IdleStream(request_iterator, context, self.idle_timeout_s)
        try:
            res = self.service.upload(decode_upload_chunk(raw) for raw in stream)
        finally:
            stream.close()
        log.info("upload %s: %s (%d bytes received, status %s)", res.upload_id, res.model_id, res.bytes_received,
                 "ok" if res.status.ok else res.status.code)
        return res

    def QueryUpload(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.service.query_upload(request)

    def Benchmark(self, request: Any, context: grpc.ServicerContext) -> Any:
        if not self._benchmarks.acquire(blocking=False):
            return _busy(benchmark_pb2.BenchmarkReport, "benchmarks", self.max_benchmarks)
        try:
            return self.service.benchmark(request, is_active=context.is_active)
        finally:
            self._benchmarks.release()

    def ListModels(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.service.list_models(request)

    def Activate(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.service.activate(request)

    def Rollback(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.service.rollback(request)

    def Delete(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.service.delete(request)


class _Capture:
    """Stands in for a grpc.Server to collect the generated method handlers."""

    handlers: dict[str, Any]

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.handlers = dict(handlers)


def register_agent_service(servicer: DeviceAgentServicer, server: grpc.Server) -> None:
    """Register the generated handlers, except that Upload receives raw bytes and decodes them zero-copy
    (protos/chunks.py) instead of through protobuf objects."""
    cap = _Capture()
    agent_pb2_grpc.add_DeviceAgentServicer_to_server(servicer, cap)
    handlers = cap.handlers
    handlers["Upload"] = handlers["Upload"]._replace(request_deserializer=None)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def parse_address(address: str) -> tuple[str, int]:
    """"HOST:PORT" (or "grpc://HOST:PORT", "[::1]:PORT") -> (host, port)."""
    addr = address.removeprefix("grpc://").rstrip("/")
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UserInputError(f"listen address {address!r} is not HOST:PORT", "pass e.g. --grpc 127.0.0.1:50051 (port 0 = any free)")
    return host, int(port)


class AgentServer:
    """A started gRPC agent server; ``stop()`` ends it."""

    def __init__(self, service: AgentService, address: str, *, workers: int = 8, max_uploads: int = 4,
                 max_benchmarks: int = 2, idle_timeout_s: float = 30.0,
                 credentials: grpc.ServerCredentials | None = None, tokens: Sequence[str] = (),
                 insecure_bind_all: bool = False) -> None:
        from devicefit.agent.auth import TokenInterceptor, check_bind

        host, port = parse_address(address)
        check_bind(host, tls=credentials is not None, insecure_bind_all=insecure_bind_all)
        self.service = service
        self.health = health.HealthServicer()
        # the pool: ``workers`` threads for quick RPCs on top of the upload and benchmark slots
        threads = workers + max_uploads + max_benchmarks
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="devicefit-rpc"),
            options=GRPC_OPTIONS,
            maximum_concurrent_rpcs=threads * 4,
            interceptors=[TokenInterceptor(tokens)] if tokens else None,
        )
        servicer = DeviceAgentServicer(service, max_uploads=max_uploads, max_benchmarks=max_benchmarks,
                                       idle_timeout_s=idle_timeout_s)
        register_agent_service(servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.tls = credentials is not None
        bound = (self.server.add_secure_port(f"{host}:{port}", credentials) if credentials is not None
                 else self.server.add_insecure_port(f"{host}:{port}"))
        if bound == 0:
            raise UserInputError(f"could not listen on {host}:{port}", "pick a free port (or port 0) and a local address")
        self.host, self.port = host, bound
        self.server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{'grpcs' if self.tls else 'grpc'}://{host}:{self.port}"

    def stop(self, grace: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


#: glibc mallopt parameters (malloc.h): M_TRIM_THRESHOLD, M_MMAP_THRESHOLD
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_glibc: Any = None  # the C library once tune_allocator has tuned it


def release_free_memory() -> None:
    """Give the free heap back to the OS (glibc ``malloc_trim``) once tune_allocator has made malloc keep it."""
    if _glibc is not None:
        _glibc.malloc_trim(0)


def tune_allocator(*, mmap_threshold: int = MAX_MESSAGE_BYTES + (64 << 10), trim_threshold: int = 32 << 20) -> bool:
    """Let glibc's malloc reuse the buffers of received messages instead of mapping fresh zeroed pages.

    Each upload chunk (up to 1 MiB) arrives as a new bytes object. With glibc's defaults a block that size is
    an mmap of its own (the dynamic threshold never rises above a size that was just freed, so equal-sized
    chunks stay mmapped), and every page of it is faulted in and zeroed again: measured with
    bench/transport.py, ~20 ms of CPU per 50 MB received (a bytes-only gRPC receiver: ~50 ms -> ~32 ms), as
    much as the page-cache copy of those bytes costs. Raising the mmap threshold above the largest message and the trim
    threshold to a few chunks' worth keeps them in the heap during an upload; after each upload
    :func:`release_free_memory` hands the free heap back, so the idle agent's RSS does not grow. Process-wide,
    so only the agent process calls it (``serve_forever``); a no-op returning False where glibc's ``mallopt``
    is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        import platform

        if platform.libc_ver()[0] != "glibc":
            return False
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        if not (libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) and libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)):
            return False
    except (OSError, AttributeError, ValueError):
        return False
    global _glibc
    _glibc = libc
    return True


def make_service(
    store_dir: str | Path, *, device_id: str | None = None, commit_every: int | None = None,
    trust: Sequence[str | Path] = (), max_store_mb: float | None = None, trial: TrialLoader | None = None,
) -> AgentService:
    """The agent's service over its store; ``trust``: ed25519 public keys (.pub) artifacts must be signed by;
    ``trial``: how new models are trial-loaded (default: in a child process, see :mod:`devicefit.agent.trial_load`)."""
    from devicefit import __version__

    kw: dict[str, Any] = {}
    if commit_every is not None:
        kw["commit_every"] = commit_every
    if trust:
        from devicefit.agent.trust import Ed25519Verifier

        kw["verifier"] = Ed25519Verifier.from_files(list(trust))
    if max_store_mb is not None:
        kw["max_store_bytes"] = int(max_store_mb * 1024 * 1024)
    store = ModelStore(store_dir, **kw)
    return AgentService(store, device_id=device_id or socket.gethostname(), agent_version=__version__, trial=trial)


def serve_forever(
    address: str | None,
    *,
    store_dir: str | Path,
    device_id: str | None = None,
    workers: int = 8,
    commit_every: int | None = None,
    mqtt: str | None = None,
    fleet: str | None = None,
    tags: dict[str, str] | None = None,
    profile: str = "",
    trust: Sequence[str | Path] = (),
    max_store_mb: float | None = None,
    idle_timeout_s: float = 30.0,
    max_uploads: int = 4,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    client_ca: str | None = None,
    token_file: str | None = None,
    insecure_bind_all: bool = False,
    trial: TrialLoader | None = None,
) -> int:
    """Run the agent until SIGTERM / SIGINT over gRPC (``address``), MQTT (``mqtt`` + ``fleet``) or both — one
    process, one store, one set of handlers; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s devicefit-agent %(levelname)s %(message)s")
    if address is None and mqtt is None:
        raise UserInputError("the agent has nothing to serve", "pass --grpc HOST:PORT, --mqtt URL --fleet NAME, or both")
    if mqtt is not None and not fleet:
        raise UserInputError("--mqtt needs --fleet NAME", "pass the fleet this device belongs to, e.g. --fleet plant-a")
    tune_allocator()
    try:
        service = make_service(store_dir, device_id=device_id, commit_every=commit_every, trust=trust,
                               max_store_mb=max_store_mb, trial=trial)
    except AgentError as exc:
        raise UserInputError(exc.problem, exc.fix) from exc
    server = None
    if address is not None:
        from devicefit.agent.auth import read_tokens, server_credentials

        if bool(tls_cert) != bool(tls_key) or (client_ca and not tls_cert):
            raise UserInputError("--tls-cert and --tls-key go together (and --client-ca needs them)",
                                 "make them with `devicefit certs init`")
        creds = server_credentials(tls_cert, tls_key, client_ca) if tls_cert and tls_key else None
        server = AgentServer(service, address, workers=workers, idle_timeout_s=idle_timeout_s, max_uploads=max_uploads,
                             credentials=creds, tokens=read_tokens(token_file) if token_file else (),
                             insecure_bind_all=insecure_bind_all)
    stop = threading.Event()

    def _on_signal(signum: int, frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    active = service.store.active()
    where = f"(store {service.store.root}, active {active.model_id if active else 'none'})"
    if server is not None:
        sys.stdout.write(f"devicefit agent {service.device_id} listening on {server.url} {where}\n")
        sys.stdout.flush()
    agent = None
    if mqtt is not None:
        from devicefit.agent.mqtt_agent import MqttAgent

        agent = MqttAgent(service, mqtt, fleet=str(fleet), tags=tags, profile=profile)
        connected = agent.start(timeout=5.0)
        while not connected and not stop.is_set():
            connected = agent.connected.wait(5.0)
            log.warning("waiting for the broker at %s", agent.broker.base)
        sys.stdout.write(f"devicefit agent {service.device_id} serving {agent.url} {where}\n")
        sys.stdout.flush()
    if service.startup_error:
        log.warning("active model not loaded: %s", service.startup_error)
    while not stop.wait(0.5):
        pass
    log.info("stopping")
    if agent is not None:
        agent.stop()
    if server is not None:
        server.stop()
    return 0

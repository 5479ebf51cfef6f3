"""Deploy throughput vs a raw gRPC streaming baseline, and on-device vs host latency — same machine, same run.

    .venv/bin/python bench/transport.py [--size-mb 50] [--chunk-kib 512] [--trials 7] [--transport-only]
                                        [--model FILE.onnx ...]

1. Transport: a real agent process (``python -m devicefit.agent``) on loopback receives a SIZE MB artifact.
   "devicefit deploy" is ``Device.deploy(file)`` of a bare file (activate=False: the upload, the sha256 on
   both sides, the per-chunk check, the fsync'd commits and the atomic entry into the store are measured, not
   model loading): the client hashes the file as it streams it. "devicefit upload" starts from a manifest
   whose sha256 is already known (an Artifact, hashed when it was built): the client sends the file without
   hashing it; the agent still hashes it and rejects it unless it matches. The baseline, "raw gRPC stream",
   is a bytes-only client-streaming service in its own child process that discards what it receives, fed
   with the same chunk size (default: the SDK's) from the same file over the same channel and server
   options (one warm channel, like the Device's) and with the agent's malloc settings
   (``devicefit.agent.server.tune_allocator``). Context, not targets: "raw gRPC stream, stock malloc" is the
   same service with glibc's defaults (what the agent's tuning saves a receiver); "raw + write + fsync"
   writes the bytes to a file and fsyncs it; "raw + sha256 + write + fsync" also hashes them (in the handler,
   one thread) — the least a deploy that verifies and persists what it receives must do. Trials are
   interleaved (the order rotates each trial; an untimed ``os.sync()`` between runs, so none pays for the
   previous one's writeback); medians are printed with the ratios and the CPU time that the client and the
   server process spent per transfer (Linux: the processes' CPU clocks, all threads; elsewhere psutil).
2. Latency: the agent's p50 for each model vs ``benchmark_onnx`` on the host for the same file, same
   threads, alternating rounds; the ratio agent / host.
3. The agent's RSS when idle (no model) and with a model active.

The machine may be shared: numbers are noisy; rerun before drawing conclusions. On a CPU-bound host the
ratios follow the CPU time per transfer (printed beside them): a deploy hashes 50 MB twice and copies it
into the page cache, which the raw stream does not.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np

from devicefit.transport import DEFAULT_CHUNK

RAW_SERVICE = "devicefit.bench.Raw"


# ---- raw baseline server (runs in a child process) ------------------------------------------------------
def raw_server(malloc: str) -> int:
    from concurrent import futures

    from devicefit.agent.server import GRPC_OPTIONS, tune_allocator

    if malloc == "agent" and not tune_allocator():  # the agent's process settings (serve_forever)
        print("# raw server: the agent's malloc tuning is not available here; glibc defaults", file=sys.stderr)

    def upload(request_iterator: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        n = 0
        for chunk in request_iterator:
            n += len(chunk)
        return str(n).encode()

    def store(request_iterator: Iterator[bytes], context: grpc.ServicerContext, hash_: bool = False) -> bytes:
        """Write the bytes to a file and fsync it (and hash them): the least a deploy must do with them."""
        n = 0
        h = hashlib.sha256()
        fd, name = tempfile.mkstemp(dir=os.environ.get("RAW_STORE_DIR"))
        try:
            for chunk in request_iterator:
                if hash_:
                    h.update(chunk)
                os.write(fd, chunk)
                n += len(chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
        return f"{n} {h.hexdigest() if hash_ else ''}".encode()

    def hash_store(request_iterator: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return store(request_iterator, context, hash_=True)

    handler = grpc.method_handlers_generic_handler(
        RAW_SERVICE,
        {"Upload": grpc.stream_unary_rpc_method_handler(upload), "Store": grpc.stream_unary_rpc_method_handler(store),
         "HashStore": grpc.stream_unary_rpc_method_handler(hash_store)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=GRPC_OPTIONS)  # as the agent's
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"raw listening on 127.0.0.1:{port}", flush=True)
    sys.stdin.read()  # until the parent closes stdin
    server.stop(1).wait()
    return 0


def raw_upload(channel: grpc.Channel, path: Path, chunk: int, method: str = "Upload") -> float:
    """Seconds to stream ``path`` to the raw server in ``chunk``-byte messages."""
    def gen() -> Iterator[bytes]:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                yield block

    call = channel.stream_unary(f"/{RAW_SERVICE}/{method}")
    t0 = time.perf_counter()
    n = int(call(gen(), timeout=300).split()[0])
    dt = time.perf_counter() - t0
    assert n == path.stat().st_size, (n, path.stat().st_size)
    return dt


# ---- helpers ----------------------------------------------------------------------------------------------
def write_mlp(path: Path, *, width: int = 512, depth: int = 8, seed: int = 0) -> Path:
    """A plain MLP ONNX (a few ms per run) used when no --model is given."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i in range(depth):
        inits.append(numpy_helper.from_array((rng.standard_normal((width, width)) / width**0.5).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"], name=f"mm{i}"),
                  helper.make_node("Relu", [f"h{i}"], [f"a{i}"], name=f"relu{i}")]
        prev = f"a{i}"
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["batch", width])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def rss_mb(pid: int) -> float:
    import psutil

    return float(psutil.Process(pid).memory_info().rss) / 2**20


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all threads, also those that ended)."""
    if sys.platform.startswith("linux"):
        if pid == os.getpid():
            return time.process_time()
        try:  # the process's CPU clock (clock_getcpuclockid): ns resolution where psutil has 10 ms ticks
            return time.clock_gettime(((~pid) << 3) | 2)
        except OSError:
            pass
    import psutil

    return float(sum(psutil.Process(pid).cpu_times()[:2]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=50.0)
    ap.add_argument("--chunk-kib", type=int, default=DEFAULT_CHUNK // 1024, help="chunk size of both (256-1024)")
    ap.add_argument("--trials", type=int, default=7)
    ap.add_argument("--model", type=Path, action="append", default=[], help="model(s) for the latency comparison")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--transport-only", action="store_true", help="skip the latency and memory sections")
    ap.add_argument("--raw-server", choices=["agent", "stock"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.raw_server:
        return raw_server(args.raw_server)

    import devicefit
    from devicefit.agent.benchmark import benchmark_onnx
    from devicefit.agent.launch import spawn_agent
    from devicefit.protos.manifest import Manifest
    from devicefit.transport.grpc_transport import CHANNEL_OPTIONS

    chunk = args.chunk_kib * 1024
    work = Path(tempfile.mkdtemp(prefix="devicefit-bench-transport-"))
    blob = work / "artifact.onnx"
    size = int(args.size_mb * 1e6)
    blob.write_bytes(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    print(f"# devicefit bench/transport.py — {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, artifact "
          f"{size / 1e6:.1f} MB, chunk {args.chunk_kib} KiB, {args.trials} trials (shared machine: numbers are noisy)")

    raws, raw_chs = [], []
    for malloc in ("agent", "stock"):
        proc = subprocess.Popen([sys.executable, __file__, "--raw-server", malloc], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env={**os.environ, "RAW_STORE_DIR": str(work)})
        assert proc.stdout is not None
        raws.append(proc)
        raw_chs.append(grpc.insecure_channel(proc.stdout.readline().split()[-1], options=CHANNEL_OPTIONS))
    (raw, stock), (raw_ch, stock_ch) = raws, raw_chs
    agent = spawn_agent(work / "store", device_id="bench")
    try:
        for ch in raw_chs:
            grpc.channel_ready_future(ch).result(timeout=30)
        dev = devicefit.connect(agent.url)
        time.sleep(1.0)
        idle_info_rss = dev.info()["agent_rss_mb"]
        idle_rss = rss_mb(agent.pid)
        manifest = Manifest.for_file(blob, model_id="blob")

        def deploy() -> None:
            res = dev.deploy(blob, progress=False, activate=False, chunk_size=chunk, model_id="blob")
            assert res.bytes_sent == size and not res.already_stored and res.sha256 == manifest.sha256

        def upload() -> None:
            up = dev.transport.upload(blob, manifest, activate=False, chunk_size=chunk)
            assert up["bytes_sent"] == size and not up["already_stored"]

        def forget() -> None:  # untimed: the next deploy must transfer everything again
            dev.delete("blob")

        def nothing() -> None:
            pass

        lines: dict[str, tuple[Callable[[], object], int, Callable[[], None]]] = {
            "raw gRPC stream": (lambda: raw_upload(raw_ch, blob, chunk), raw.pid, nothing),
            "raw gRPC stream, stock malloc": (lambda: raw_upload(stock_ch, blob, chunk), stock.pid, nothing),
            "raw + write + fsync": (lambda: raw_upload(raw_ch, blob, chunk, "Store"), raw.pid, nothing),
            "raw + sha256 + write + fsync": (lambda: raw_upload(raw_ch, blob, chunk, "HashStore"), raw.pid, nothing),
            "devicefit deploy": (deploy, agent.pid, forget),
            "devicefit upload": (upload, agent.pid, forget),
        }
        for fn, _, after in lines.values():  # warm-up: connections, imports, first-touch of the page cache
            fn()
            after()
        os.sync()
        secs: dict[str, list[float]] = {k: [] for k in lines}
        cpus: dict[str, list[tuple[float, float]]] = {k: [] for k in lines}
        names = list(lines)
        for trial in range(args.trials):
            for name in names[trial % len(names):] + names[: trial % len(names)]:  # rotate the order
                fn, server_pid, after = lines[name]
                c0, s0 = cpu_s(os.getpid()), cpu_s(server_pid)
                t0 = time.perf_counter()
                fn()
                secs[name].append(time.perf_counter() - t0)
                cpus[name].append((cpu_s(os.getpid()) - c0, cpu_s(server_pid) - s0))
                after()
                os.sync()  # untimed: no trial pays for the previous one's dirty pages or freed blocks
        mbps = {k: size / 1e6 / statistics.median(v) for k, v in secs.items()}
        print(f"\n## transport (median of {args.trials} interleaved trials; load {os.getloadavg()[0]:.1f} at the end)")
        for name in names:
            ratios = ""
            if name.startswith("devicefit"):
                ratios = (f"   ratio /raw = {mbps[name] / mbps['raw gRPC stream']:.2f}"
                          f"   /(raw+fsync) = {mbps[name] / mbps['raw + write + fsync']:.2f}"
                          f"   /(raw+sha256+fsync) = {mbps[name] / mbps['raw + sha256 + write + fsync']:.2f}")
            client, server = (statistics.median(c[i] for c in cpus[name]) * 1e3 for i in (0, 1))
            print(f"{name:<30} {mbps[name]:7.1f} MB/s   cpu client {client:4.0f} ms + server {server:4.0f} ms{ratios}")
            print(f"{'':<30} trials s: {', '.join(f'{x:.3f}' for x in secs[name])}")
        if args.transport_only:
            dev.close()
            return 0

        models = args.model or [write_mlp(work / "mlp512x8.onnx")]
        print(f"\n## latency: agent vs host, threads={args.threads}, runs={args.runs}, median p50 of {args.rounds} rounds")
        for model in models:
            d = dev.deploy(model, progress=False, activate=True)
            host_p50, agent_p50 = [], []
            for _ in range(args.rounds):
                host_p50.append(benchmark_onnx(model, runs=args.runs, warmup=5, threads=args.threads).p50_ms)
                agent_p50.append(dev.benchmark(d.model_id, runs=args.runs, warmup=5, threads=args.threads).p50_ms)
            h, a = statistics.median(host_p50), statistics.median(agent_p50)
            print(f"{model.name:<24} host p50 {h:9.3f} ms   agent p50 {a:9.3f} ms   ratio agent/host = {a / h:.3f}"
                  f"   (host rounds {', '.join(f'{x:.3f}' for x in host_p50)}; agent {', '.join(f'{x:.3f}' for x in agent_p50)})")
        active_rss = rss_mb(agent.pid)
        print("\n## agent memory")
        print(f"idle (no model): RSS {idle_rss:.1f} MB (psutil on the agent pid; info() says {idle_info_rss:.1f} MB)")
        print(f"with {models[-1].name} active: RSS {active_rss:.1f} MB")
        dev.close()
    finally:
        agent.stop()
        for ch, proc in zip(raw_chs, raws, strict=True):
            ch.close()
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(10)
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

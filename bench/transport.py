"""Deploy throughput vs a raw gRPC streaming baseline, and on-device vs host latency — same machine, same run.

    .venv/bin/python bench/transport.py [--size-mb 50] [--chunk-kib 512] [--trials 3] [--model FILE.onnx ...]

1. Transport: a real agent process (``python -m devicefit.agent``) on loopback receives a SIZE MB artifact
   through ``Device.deploy`` (activate=False: the upload, CRC, sha256, fsync'd commits and the atomic store
   are measured, not model loading). The baseline is a bytes-only gRPC client-streaming service in its own
   process, fed with the same chunk size from the same file; a second baseline also writes the bytes to a
   file and fsyncs it (the least a deploy must do). Trials alternate; medians are printed with the ratios. "deploy" includes the client's sha256 of the file; "upload" starts from a
   precomputed manifest.
2. Latency: the agent's p50 for each model vs ``benchmark_onnx`` on the host for the same file, same
   threads, alternating rounds; the ratio agent / host.
3. The agent's RSS when idle (no model) and with a model active.

The machine may be shared: numbers are noisy; rerun before drawing conclusions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np

RAW_METHOD = "/devicefit.bench.Raw/Upload"
RAW_STORE_METHOD = "/devicefit.bench.Raw/Store"


# ---- raw baseline server (runs in a child process) ------------------------------------------------------
def raw_server() -> int:
    from concurrent import futures

    def upload(request_iterator: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        n = 0
        for chunk in request_iterator:
            n += len(chunk)
        return str(n).encode()

    def store(request_iterator: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        """The least any deploy must do with the bytes: write them to a file and fsync it."""
        n = 0
        with tempfile.NamedTemporaryFile(dir=os.environ.get("RAW_STORE_DIR")) as f:
            for chunk in request_iterator:
                f.write(chunk)
                n += len(chunk)
            f.flush()
            os.fsync(f.fileno())
        return str(n).encode()

    handler = grpc.method_handlers_generic_handler(
        "devicefit.bench.Raw",
        {"Upload": grpc.stream_unary_rpc_method_handler(upload), "Store": grpc.stream_unary_rpc_method_handler(store)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         options=[("grpc.max_receive_message_length", 4 * 1024 * 1024)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"raw listening on 127.0.0.1:{port}", flush=True)
    sys.stdin.read()  # until the parent closes stdin
    server.stop(1).wait()
    return 0


def raw_upload(target: str, path: Path, chunk: int, method: str = RAW_METHOD) -> float:
    """Seconds to stream ``path`` to the raw server in ``chunk``-byte messages."""
    def gen() -> Iterator[bytes]:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                yield block

    with grpc.insecure_channel(target) as ch:
        grpc.channel_ready_future(ch).result(timeout=30)
        call = ch.stream_unary(method)
        t0 = time.perf_counter()
        n = int(call(gen(), timeout=300))
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=50.0)
    ap.add_argument("--chunk-kib", type=int, default=512)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--model", type=Path, action="append", default=[], help="model(s) for the latency comparison")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--raw-server", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.raw_server:
        return raw_server()

    import devicefit
    from devicefit.agent.benchmark import benchmark_onnx
    from devicefit.agent.launch import spawn_agent
    from devicefit.agent.manifest import Manifest

    chunk = args.chunk_kib * 1024
    work = Path(tempfile.mkdtemp(prefix="devicefit-bench-transport-"))
    blob = work / "artifact.onnx"
    size = int(args.size_mb * 1e6)
    blob.write_bytes(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    print(f"# devicefit bench/transport.py — {os.cpu_count()} CPUs, artifact {size / 1e6:.1f} MB, chunk {args.chunk_kib} KiB"
          " (shared machine: numbers are noisy)")

    raw = subprocess.Popen([sys.executable, __file__, "--raw-server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True, env={**os.environ, "RAW_STORE_DIR": str(work)})
    assert raw.stdout is not None
    raw_target = raw.stdout.readline().split()[-1]
    agent = spawn_agent(work / "store", device_id="bench")
    try:
        dev = devicefit.connect(agent.url)
        time.sleep(1.0)
        idle_info_rss = dev.info()["agent_rss_mb"]
        idle_rss = rss_mb(agent.pid)
        raw_s, rawfs_s, deploy_s, upload_s = [], [], [], []
        manifest = Manifest.for_file(blob, model_id="blob")
        for _ in range(args.trials):
            raw_s.append(raw_upload(raw_target, blob, chunk))
            rawfs_s.append(raw_upload(raw_target, blob, chunk, RAW_STORE_METHOD))
            t0 = time.perf_counter()
            res = dev.deploy(blob, progress=False, activate=False, chunk_size=chunk, model_id="blob")
            deploy_s.append(time.perf_counter() - t0)
            assert res.bytes_sent == size and not res.already_stored
            dev.delete("blob")
            t0 = time.perf_counter()
            up = dev.transport.upload(blob, manifest, activate=False, chunk_size=chunk)
            upload_s.append(time.perf_counter() - t0)
            assert up["bytes_sent"] == size
            dev.delete("blob")
        mbps = {k: size / 1e6 / statistics.median(v) for k, v in
                (("raw", raw_s), ("rawfs", rawfs_s), ("deploy", deploy_s), ("upload", upload_s))}
        print(f"\n## transport (median of {args.trials} trials, MB/s)")
        print(f"raw gRPC stream   {mbps['raw']:8.1f} MB/s   trials s: {', '.join(f'{s:.3f}' for s in raw_s)}")
        print(f"raw + file+fsync  {mbps['rawfs']:8.1f} MB/s   trials s: {', '.join(f'{s:.3f}' for s in rawfs_s)}")
        for key in ("deploy", "upload"):
            times = deploy_s if key == "deploy" else upload_s
            print(f"devicefit {key:<7} {mbps[key]:8.1f} MB/s   trials s: {', '.join(f'{s:.3f}' for s in times)}"
                  f"   ratio {key}/raw = {mbps[key] / mbps['raw']:.2f}   {key}/(raw+fsync) = {mbps[key] / mbps['rawfs']:.2f}")

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
        assert raw.stdin is not None
        raw.stdin.close()
        raw.wait(10)
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

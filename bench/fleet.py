"""A fleet rollout on this machine: N agent processes behind a real Mosquitto, one M MB model, gated waves.

    .venv/bin/python bench/fleet.py [--agents 100] [--model-mb 5] [--waves 0.05,0.25,1.0] [--runs 10] [--concurrency 16]

Starts Mosquitto on a free loopback port (Debian package ``mosquitto``; its queue limits raised in the
generated config), N MQTT-only agents (``python -m devicefit.agent --mqtt … --fleet bench``), builds an ONNX
model of about M MB (one MatMul), and rolls it out with ``devicefit.Fleet`` (gate: p90 within 1 s, failures 0).
Prints: agent start-up time, the rollout's wall time, per wave the host bytes published ÷ model size (the
broker fans each chunk out: goal ≤ 1.2), the broker's bytes sent ÷ (model size × N) (from ``$SYS``), and the
spread of the per-device p50 (min / median / max, and max / min). Everything it starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def write_model(path: Path, mb: float) -> Path:
    """x[1, K] @ W[K, K] with K chosen so that W is ``mb`` MiB of float32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k = int(math.sqrt(mb * 2**20 / 4))
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, k)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")], "fleet_bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, k])], [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


class SysBytes:
    """The broker's ``$SYS/broker/bytes/sent`` counter (Mosquitto publishes it every sys_interval)."""

    def __init__(self, url: str) -> None:
        import paho.mqtt.client as mqtt

        from devicefit.protos.topics import BrokerUrl

        self.value: int | None = None
        self._seen = threading.Event()
        b = BrokerUrl.parse(url)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="devicefit-bench-sys")
        c.on_connect = lambda cl, *_: cl.subscribe("$SYS/broker/bytes/sent")
        c.on_message = self._on
        c.connect(b.host, b.port)
        c.loop_start()
        self.client = c

    def _on(self, client: object, userdata: object, msg: object) -> None:
        self.value = int(msg.payload)  # type: ignore[attr-defined]
        self._seen.set()

    def read(self, timeout: float = 5.0) -> int:
        """A value published after this call."""
        self._seen.clear()
        self._seen.wait(timeout)
        return int(self.value or 0)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--model-mb", type=float, default=5.0)
    ap.add_argument("--waves", default="0.05,0.25,1.0")
    ap.add_argument("--runs", type=int, default=10, help="benchmark runs per device (default 10)")
    ap.add_argument("--concurrency", type=int, default=16, help="devices the host drives at once (default 16)")
    args = ap.parse_args(argv)

    from devicefit.agent.launch import AgentProcess
    from devicefit.fleet import Fleet, Gate
    from devicefit.transport.mosquitto import Mosquitto

    tmp = Path(tempfile.mkdtemp(prefix="devicefit-fleet-bench-"))
    model = write_model(tmp / "model.onnx", args.model_mb)
    size = model.stat().st_size
    waves = [float(x) for x in args.waves.split(",")]
    agents: list[AgentProcess] = []
    with Mosquitto(tmp / "mosquitto", sys_interval=1) as broker:
        t0 = time.perf_counter()

        def start(i: int) -> AgentProcess:
            return AgentProcess(tmp / f"a{i:03d}", device_id=f"dev{i:03d}", address=None, start_timeout=300,
                                extra_args=("--mqtt", broker.url, "--fleet", "bench"))

        try:
            with ThreadPoolExecutor(max_workers=8) as pool:
                agents = list(pool.map(start, range(args.agents)))
            startup = time.perf_counter() - t0
            sys_bytes = SysBytes(broker.url)
            with Fleet(broker.url, fleet="bench", state=tmp / "state.sqlite", concurrency=args.concurrency) as fleet:
                deadline = time.monotonic() + 120
                while len(fleet.devices(online=True)) < args.agents and time.monotonic() < deadline:
                    time.sleep(0.2)
                online = len(fleet.devices(online=True))
                before = sys_bytes.read()
                t1 = time.perf_counter()
                r = fleet.rollout(model, waves=waves, gate=Gate(max_p90_ms=1000.0, max_regression=None),
                                  runs=args.runs, report_dir=tmp / "report",
                                  progress=lambda w, n, ph, k: print(f"  wave {w + 1}/{n}: {ph} ({k} devices)",
                                                                     flush=True))
                wall = time.perf_counter() - t1
                broker_sent = sys_bytes.read() - before
            sys_bytes.close()
        finally:
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda a: a.stop(), agents))
    p50 = sorted(d.p50_ms for d in r.devices if d.p50_ms is not None)
    print(f"agents {args.agents} (online {online}), model {size / 2**20:.2f} MiB, waves {waves}, runs {args.runs}, "
          f"concurrency {args.concurrency}")
    print(f"agent start-up: {startup:.1f} s; rollout: {r.state} in {wall:.1f} s "
          f"({sum(d.state == 'done' for d in r.devices)} done, {sum(d.state == 'failed' for d in r.devices)} failed)")
    for w in r.wave_rows:
        n = sum(d.wave == w["wave"] for d in r.devices)
        print(f"  wave {w['wave'] + 1}: {n} devices, host bytes published / model size = {w['host_bytes'] / size:.3f}")
    total_host = sum(w["host_bytes"] for w in r.wave_rows)
    print(f"host bytes / (model size x N) = {total_host / (size * len(r.devices)):.4f}; "
          f"broker bytes sent / (model size x N) = {broker_sent / (size * len(r.devices)):.3f}")
    if p50:
        print(f"per-device p50: min {p50[0]:.3f} ms, median {statistics.median(p50):.3f} ms, max {p50[-1]:.3f} ms "
              f"(max/min {p50[-1] / p50[0]:.2f})")
    print(f"report: {tmp / 'report'}")
    return 0 if r.state == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())

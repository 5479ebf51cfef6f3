"""Load: 8 clients x (deploy + benchmark + info) against one agent process for a bounded time (60 s; override with
DEVICEFIT_LOAD_S). Every request is answered — served, or refused with a clear code — none dropped or left
hanging; the agent's RSS grows by less than 50 MB. Prints the figures."""

from __future__ import annotations

import collections
import os
import threading
import time
from pathlib import Path

import pytest

import devicefit
from devicefit.agent.launch import spawn_agent
from devicefit.errors import DeviceError

from .conftest import write_tiny_onnx

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
CLIENTS = 8
CLEAR_CODES = {"BUSY", "LOAD_FAILED", "RESOURCE_EXHAUSTED"}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_eight_clients_for_a_bounded_time(tmp_path: Path) -> None:
    duration = float(os.environ.get("DEVICEFIT_LOAD_S", "60"))
    models = [write_tiny_onnx(tmp_path / f"m{i}.onnx", hidden=16, seed=i) for i in range(16)]
    outcomes: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    failures: list[str] = []

    def record(what: str, fn: object) -> None:
        try:
            fn()  # type: ignore[operator]
            key = f"{what}:ok"
        except DeviceError as exc:
            code = getattr(exc, "code", "")
            key = f"{what}:{code or 'error'}"
            if code not in CLEAR_CODES:
                failures.append(f"{what}: {exc}")
        with lock:
            outcomes[key] += 1

    with spawn_agent(tmp_path / "store", device_id="load") as agent:
        pid = agent.proc.pid
        with devicefit.connect(agent.url) as dev:  # warm up: first model loaded, onnxruntime imported
            dev.deploy(models[0], progress=False)
            dev.benchmark(runs=3, warmup=1)
        rss0 = _rss_mb(pid)
        stop = time.monotonic() + duration

        def client(i: int) -> None:
            n = 0
            with devicefit.connect(agent.url, timeout=60.0) as dev:
                while time.monotonic() < stop:
                    m = models[(i + n) % len(models)]
                    record("deploy", lambda m=m, a=(n % 2 == 0): dev.deploy(m, progress=False, activate=a))
                    record("benchmark", lambda: dev.benchmark(runs=3, warmup=0))
                    record("info", dev.info)
                    n += 1

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(duration + 120)
        hung = sum(t.is_alive() for t in threads)
        rss1 = _rss_mb(pid)
        with devicefit.connect(agent.url) as dev:
            assert dev.transport.health() == "SERVING"  # type: ignore[attr-defined]
    total = sum(outcomes.values())
    print(f"\nload: {CLIENTS} clients, {duration:g} s: {total} requests {dict(sorted(outcomes.items()))}; "
          f"agent RSS {rss0:.1f} -> {rss1:.1f} MB (+{rss1 - rss0:.1f})")
    assert hung == 0, f"{hung} clients never finished"
    assert failures == [], failures[:5]
    assert outcomes["info:ok"] > 0 and outcomes["deploy:ok"] > 0 and outcomes["benchmark:ok"] > 0
    assert rss1 - rss0 < 50, f"agent RSS grew {rss1 - rss0:.1f} MB"

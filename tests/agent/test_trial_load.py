"""Contained model loads (issue #14): real models that hang, exhaust memory or crash a runtime at load are refused
by a live agent, which keeps serving its active model and answers health checks within 1 s meanwhile."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import devicefit
from devicefit.agent.launch import AgentProcess, spawn_agent
from devicefit.agent.service import AgentService
from devicefit.agent.store import ModelStore
from devicefit.agent.trial_load import TrialLoader, Verdict
from devicefit.artifact import Artifact
from devicefit.errors import DeviceError
from devicefit.protos import errors as E
from devicefit.protos import wire
from devicefit.protos.devicefit.v1 import agent_pb2, artifact_pb2, benchmark_pb2
from devicefit.protos.schema import stamp

from .conftest import write_tiny_tflite

pytestmark = pytest.mark.timeout(180)
HEALTH_DEADLINE_S = 1.0
TRIAL_TIMEOUT_S = 3.0
TRIAL_MEMORY_MB = 2048  # leaves room for a thread stack per core on large CI machines


def _scalar_model(nodes: list[Any], inits: list[Any], name: str, path: Path) -> Path:
    """y = x + f(constants): a float [1] input, so the agent generates its inputs."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def write_hang_onnx(path: Path, *, n: int = 4096, depth: int = 64) -> Path:
    """A few hundred bytes that take minutes to load: onnxruntime constant-folds a chain of ``depth`` [n, n]
    MatMuls of a ConstantOfShape at session creation (measured: ~2.3 s per 4096² MatMul on one x86 core)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["c0"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))]
    prev = "c0"
    for i in range(depth):
        nodes.append(helper.make_node("MatMul", [prev, "c0"], [f"m{i}"]))
        prev = f"m{i}"
    nodes += [helper.make_node("ReduceSum", [prev], ["r"], keepdims=0), helper.make_node("Add", ["x", "r"], ["y"])]
    return _scalar_model(nodes, [numpy_helper.from_array(np.array([n, n], np.int64), "shape")], "hang", path)


def write_memory_bomb_onnx(path: Path, *, floats: int = 250_000_000, copies: int = 3) -> Path:
    """``copies`` ConstantOfShape of ``floats`` float32 each (1 GB) that onnxruntime folds — allocates — at session
    creation (it folds constants up to 1 GiB each): 3 GB at load."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = []
    for i in range(copies):
        nodes += [helper.make_node("ConstantOfShape", ["shape"], [f"c{i}"],
                                   value=helper.make_tensor("v", TensorProto.FLOAT, [1], [float(i + 1)])),
                  helper.make_node("ReduceMax", [f"c{i}"], [f"r{i}"], keepdims=0)]
    nodes.append(helper.make_node("Sum", ["x", *(f"r{i}" for i in range(copies))], ["y"]))
    return _scalar_model(nodes, [numpy_helper.from_array(np.array([floats], np.int64), "shape")], "bomb", path)


#: one byte of the tiny ADD model (conftest.write_tiny_tflite), in the flatbuffer's root vtable, that makes LiteRT
#: (ai-edge-litert) die of SIGSEGV while it builds the interpreter — found by byte-mutation fuzzing, reduced by hand
#: (offset -> (byte in the valid model, byte written))
CRASH_BYTES = {10: (14, 6)}


def write_crash_tflite(path: Path) -> Path:
    """The tiny ADD model with :data:`CRASH_BYTES` written: LiteRT segfaults loading it."""
    buf = bytearray(write_tiny_tflite(path).read_bytes())
    for offset, (was, new) in CRASH_BYTES.items():
        assert buf[offset] == was, "the tiny .tflite layout changed: find new crash bytes"
        buf[offset] = new
    path.write_bytes(bytes(buf))
    return path


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    return {"hang": write_hang_onnx(d / "hang.onnx"), "bomb": write_memory_bomb_onnx(d / "bomb.onnx"),
            "crash": write_crash_tflite(d / "crash.tflite")}


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    args = ("--trial-timeout", str(TRIAL_TIMEOUT_S), "--trial-memory-mb", str(TRIAL_MEMORY_MB))
    with spawn_agent(tmp_path_factory.mktemp("agent") / "store", device_id="trial", extra_args=args) as proc:
        yield proc


@pytest.fixture(scope="module")
def active(agent: AgentProcess, tiny_onnx: Path) -> str:
    with devicefit.connect(agent.url) as dev:
        res = dev.deploy(tiny_onnx, model_id="good", progress=False)
    assert res.active
    return res.sha256


def _health_s(agent: AgentProcess) -> float:
    """Seconds the health check took to answer SERVING (it fails past HEALTH_DEADLINE_S)."""
    t0 = time.perf_counter()
    with grpc.insecure_channel(agent.url.removeprefix("grpc://")) as ch:
        st = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_DEADLINE_S)
    assert st.status == health_pb2.HealthCheckResponse.SERVING
    return time.perf_counter() - t0


def _trial_children(agent: AgentProcess) -> list[int]:
    """PIDs of the trial loads running now (children of the fork server, or one-shot children of the agent)."""
    out = []
    for p in psutil.Process(agent.pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            cmd = " ".join(p.cmdline())
            server = p.ppid() == agent.pid and "--serve" in cmd
            if "devicefit.agent.trial_load" in cmd and not server:
                out.append(p.pid)
    return out


def _refused_while_serving(agent: AgentProcess, active: str, request: Callable[[], Any],
                           during: Callable[[], None] | None = None) -> tuple[str, str, dict[str, Any]]:
    """Run ``request`` (it must be refused) in a thread; meanwhile probe health and benchmark the active model
    (and call ``during`` once, while a trial child runs). Returns (code, message, {health_max_s, probes, runs,
    saw_child})."""
    out: dict[str, Any] = {}

    def _go() -> None:
        try:
            request()
            out["error"] = None
        except DeviceError as exc:
            out["error"] = exc

    th = threading.Thread(target=_go, daemon=True)
    th.start()
    health: list[float] = []
    runs: list[int] = []
    saw_child = False
    with devicefit.connect(agent.url) as dev:
        while True:  # at least one probe, then until the request is answered
            if not saw_child and _trial_children(agent):
                saw_child = True
                if during is not None:
                    during()
            health.append(_health_s(agent))
            runs.append(dev.benchmark("good", runs=2, warmup=0).runs)  # the active model still serves
            assert dev.transport.list_models()["active_sha256"] == active
            if not th.is_alive():
                break
            time.sleep(0.1)
    th.join(30)
    err = out["error"]
    assert err is not None, "the bad model was accepted"
    return str(getattr(err, "code", "")), str(err), {
        "health_max_s": max(health, default=0.0), "probes": len(health), "runs": set(runs), "saw_child": saw_child}


def test_a_model_that_hangs_at_load_is_refused_while_the_agent_serves(agent: AgentProcess, active: str,
                                                                    bad: dict[str, Path], tiny_onnx_b: Path) -> None:
    other: list[int] = []

    def benchmark_another_new_model() -> None:  # its trial runs beside the hung one (a process of its own)
        with devicefit.connect(agent.url) as d:
            d.deploy(tiny_onnx_b, model_id="b", progress=False, activate=False)
            other.append(d.benchmark("b", runs=2, warmup=0).runs)

    with devicefit.connect(agent.url) as dev:
        code, msg, seen = _refused_while_serving(
            agent, active, lambda: dev.deploy(bad["hang"], model_id="hang", progress=False), benchmark_another_new_model)
    assert code == E.LOAD_FAILED
    assert f"within {TRIAL_TIMEOUT_S:g} s" in msg and "--trial-timeout" in msg
    assert seen["saw_child"] and seen["probes"] >= 3 and seen["runs"] == {2} and other == [2]
    assert seen["health_max_s"] < HEALTH_DEADLINE_S
    assert _trial_children(agent) == []  # the hung child was killed, not left behind
    # remembered: a second activation is refused at once, without another trial
    with devicefit.connect(agent.url) as dev:
        t0 = time.perf_counter()
        with pytest.raises(DeviceError) as exc:
            dev.activate("hang")
        assert getattr(exc.value, "code", None) == E.LOAD_FAILED
        assert time.perf_counter() - t0 < TRIAL_TIMEOUT_S
        assert dev.transport.list_models()["active_sha256"] == active


def test_a_memory_bomb_at_load_is_refused_by_the_trial_memory_limit(agent: AgentProcess, active: str,
                                                                    bad: dict[str, Path]) -> None:
    with devicefit.connect(agent.url) as dev:
        code, msg, seen = _refused_while_serving(
            agent, active, lambda: dev.deploy(bad["bomb"], model_id="bomb", progress=False))
    assert code == E.LOAD_FAILED
    assert f"trial limit of {TRIAL_MEMORY_MB} MiB" in msg and "--trial-memory-mb" in msg
    assert seen["health_max_s"] < HEALTH_DEADLINE_S and seen["runs"] == {2}
    assert psutil.Process(agent.pid).memory_info().rss < 600 * 2**20  # the gigabytes never entered the agent


def test_a_model_that_crashes_the_runtime_is_refused_and_benchmarks_too(agent: AgentProcess, active: str,
                                                                       bad: dict[str, Path]) -> None:
    # the crash is real: LiteRT dies of SIGSEGV on this file, in a process of its own
    alone = subprocess.run([sys.executable, "-m", "devicefit.agent.trial_load", str(bad["crash"]), "--format",
                            "tflite"], capture_output=True, timeout=60, check=False)
    assert alone.returncode == -signal.SIGSEGV
    with devicefit.connect(agent.url) as dev:
        dev.deploy(bad["crash"], model_id="crash", progress=False, activate=False)  # storing never parses it
        code, msg, seen = _refused_while_serving(agent, active, lambda: dev.benchmark("crash", runs=2, warmup=0))
        assert code == E.LOAD_FAILED and "died of SIGSEGV" in msg
        with pytest.raises(DeviceError, match="SIGSEGV"):
            dev.activate("crash")
    assert seen["health_max_s"] < HEALTH_DEADLINE_S
    assert agent.proc.poll() is None


def test_without_trial_loads_the_crashing_model_kills_the_agent(tmp_path: Path, bad: dict[str, Path]) -> None:
    """The control: the same model deployed to an agent started with --no-trial-load takes it down."""
    with spawn_agent(tmp_path / "store", device_id="bare", extra_args=("--no-trial-load",)) as proc:
        with devicefit.connect(proc.url) as dev, pytest.raises(DeviceError):
            dev.deploy(bad["crash"], model_id="crash", progress=False)
        assert proc.proc.wait(30) == -signal.SIGSEGV


def test_a_verdict_is_remembered_per_sha256(tmp_path: Path, tiny_onnx: Path, tiny_onnx_b: Path,
                                            bad: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Each model is trial-loaded once (wrapping the real trial to count it): good ones then load in-process."""
    trial = TrialLoader(timeout_s=60, memory_mb=TRIAL_MEMORY_MB)
    calls: list[str] = []
    real = TrialLoader._trial

    def counted(self: TrialLoader, path: Path, fmt: str) -> Verdict:
        calls.append(path.name.split(".")[0])  # stored blobs are named by their sha256
        return real(self, path, fmt)

    monkeypatch.setattr(TrialLoader, "_trial", counted)
    svc = AgentService(ModelStore(tmp_path / "store"), device_id="d", trial=trial)
    shas = {}
    for name, path in (("a", tiny_onnx), ("b", tiny_onnx_b), ("bomb", bad["bomb"])):
        m = wire.manifest_to_proto(Artifact.from_file(path, model_id=name).manifest)
        res = svc.upload([stamp(artifact_pb2.UploadChunk(upload_id=f"u-{name}", manifest=m, data=path.read_bytes()))])
        assert res.status.ok, res.status
        shas[name] = res.sha256
    for name in ("a", "b", "a", "b", "bomb", "bomb"):
        svc.activate(stamp(agent_pb2.ActivateRequest(model_id=name)))
        svc.benchmark(stamp(benchmark_pb2.BenchmarkRequest(model_id=name, runs=1)))
    assert sorted(calls) == sorted(shas.values())  # three models, six activations + six benchmarks: three trials
    assert svc.store.active_sha == shas["b"]
    verdict = trial.verdict(shas["bomb"])
    assert verdict is not None and not verdict.ok and "trial limit" in verdict.problem
    good = trial.verdict(shas["a"])
    assert good is not None and good.ok and good.trial_ms > good.load_ms > 0
    refused = svc.activate(stamp(agent_pb2.ActivateRequest(model_id="bomb")))
    assert refused.status.code == E.LOAD_FAILED and "trial limit" in refused.status.message
    server = trial._server
    assert server is not None and server.alive()  # the trials ran in children of the fork server
    trial.close()
    assert not server.alive()


def test_trial_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="timeout"):
        TrialLoader(timeout_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        TrialLoader(memory_mb=-1)
    assert TrialLoader(memory_mb=0).memory_mb == 0 and TrialLoader().memory_mb > 0
    assert os.path.basename(sys.executable) in TrialLoader().command(Path("m.onnx"), "onnx")[0]


def test_an_active_model_that_crashes_the_runtime_does_not_crash_the_agent_at_start(
        tmp_path: Path, tiny_onnx: Path, bad: dict[str, Path]) -> None:
    """The store names as active a model that now crashes the runtime (as after a runtime upgrade): the agent
    starts anyway, serves its API, reports the refusal, and takes a new model."""
    store = tmp_path / "store"
    with spawn_agent(store, device_id="boot") as agent, devicefit.connect(agent.url) as dev:
        crash = dev.deploy(bad["crash"], model_id="crash", progress=False, activate=False)
    state_file = store / "state.json"
    state = json.loads(state_file.read_text())
    state["active"] = crash.sha256  # what a runtime upgrade would turn a good active model into
    state_file.write_text(json.dumps(state))
    with spawn_agent(store, device_id="boot") as agent, devicefit.connect(agent.url) as dev:
        assert _health_s(agent) < HEALTH_DEADLINE_S
        assert dev.transport.list_models()["active_sha256"] == crash.sha256  # named, not loaded
        with pytest.raises(DeviceError, match="SIGSEGV"):
            dev.benchmark(runs=2, warmup=0)
        assert "SIGSEGV" in agent.log_tail()  # the startup refusal is logged
        res = dev.deploy(tiny_onnx, model_id="good", progress=False)
        assert res.active and dev.benchmark(runs=2, warmup=0).runs == 2
        assert agent.proc.poll() is None


def test_a_fork_server_that_died_is_replaced(tiny_onnx: Path, tiny_onnx_b: Path, bad: dict[str, Path]) -> None:
    trial = TrialLoader(timeout_s=60, memory_mb=TRIAL_MEMORY_MB)
    try:
        assert trial.check(tiny_onnx, sha256="a" * 64, fmt="onnx", label="a").ok
        first = trial._server
        assert first is not None
        os.kill(first.proc.pid, signal.SIGKILL)  # e.g. the OOM killer
        first.proc.wait(10)
        assert trial.check(tiny_onnx_b, sha256="b" * 64, fmt="onnx", label="b").ok
        with pytest.raises(DeviceError, match="SIGSEGV"):
            trial.check(bad["crash"], sha256="c" * 64, fmt="tflite", label="c")
        assert trial._server is not None and trial._server is not first and trial._server.alive()
    finally:
        trial.close()


def test_remembered_verdicts_are_bounded(tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trial = TrialLoader(timeout_s=60)
    monkeypatch.setattr(TrialLoader, "MAX_VERDICTS", 3)
    try:
        for i in range(5):
            trial.check(tiny_onnx, sha256=f"{i:064x}", fmt="onnx", label=str(i))
        trial.mark_good(f"{2:064x}")  # used again: the newest
        trial.check(tiny_onnx, sha256=f"{5:064x}", fmt="onnx", label="5")
        assert [trial.verdict(f"{i:064x}") is not None for i in range(6)] == [False, False, True, False, True, True]
        assert trial._locks == {}
    finally:
        trial.close()

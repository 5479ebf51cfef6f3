"""Mutated model files deployed to a live agent over gRPC on loopback (issue #14, Done when: ≥ 2,000 mutated inputs
per parser, no crash of the agent process, no INTERNAL answer for a malformed input, bounded time).

Each input is one Upload RPC with ``activate`` set — the agent stores it, then loads and runs it (the runtime's
parser) — and, where it was accepted, a Benchmark of it; then it is deleted so the store stays small. Mutations
are seeded (truncations, byte overwrites, span deletions / duplications / random fills) of a tiny valid model
built in the test.

ONNX: the agent runs with ``--no-trial-load``, so onnxruntime parses every mutated file inside the agent's own
process — a crash there would kill the agent and fail the test. TFLite: LiteRT *does* die of SIGSEGV on some
mutated flatbuffers (see tests/agent/test_trial_load.py), so that fuzz runs with trial loads on (the agent's
default) and shows they contain it; a trial costs a child process (~0.3-0.5 s here), so the 2,000 .tflite inputs
are spread over four concurrent clients.
"""

from __future__ import annotations

import collections
import hashlib
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devicefit.agent.launch import AgentProcess, spawn_agent
from devicefit.artifact import Artifact
from devicefit.protos import errors as E
from devicefit.protos import wire
from devicefit.protos.devicefit.v1 import agent_pb2, agent_pb2_grpc, artifact_pb2, benchmark_pb2
from devicefit.protos.schema import stamp

from .conftest import write_tiny_onnx, write_tiny_tflite

N_INPUTS = 2000
HEALTH_DEADLINE_S = 1.0


def mutations(base: bytes, n: int, *, seed: int) -> Iterator[bytes]:
    """``n`` distinct seeded mutants of ``base``, each different from it."""
    rng = random.Random(seed)
    made, seen = 0, {base}
    while made < n:
        b = bytearray(base)
        kind = rng.randrange(5)
        if kind == 0:  # truncation
            b = b[: rng.randrange(len(b))]
        elif kind == 1:  # 1-8 bytes overwritten
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        elif kind == 2:  # a span deleted
            i = rng.randrange(len(b))
            del b[i: i + rng.randint(1, 64)]
        elif kind == 3:  # a span duplicated
            i = rng.randrange(len(b))
            b[i:i] = b[i: i + rng.randint(1, 64)]
        else:  # a span of random bytes
            i = rng.randrange(len(b))
            b[i: i + rng.randint(1, 32)] = rng.randbytes(rng.randint(1, 32))
        if bytes(b) not in seen:
            seen.add(bytes(b))
            made += 1
            yield bytes(b)


class LiveFuzz:
    """Deploys inputs to one agent and records every answer."""

    def __init__(self, agent: AgentProcess, template: Artifact, suffix: str) -> None:
        self.agent, self.suffix = agent, suffix
        self.manifest = wire.manifest_to_proto(template.manifest)
        self.channel = grpc.insecure_channel(agent.url.removeprefix("grpc://"))
        self.stub = agent_pb2_grpc.DeviceAgentStub(self.channel)
        self.codes: collections.Counter[str] = collections.Counter()
        self.internal: list[str] = []
        self.health_max_s = 0.0
        self.wall_s = 0.0
        self._lock = threading.Lock()

    def _record(self, what: str, status: Any) -> None:
        code = "OK" if status.ok else status.code
        if "the trial process died of" in status.message:
            code += "(runtime crashed)"  # contained by the trial load
        with self._lock:
            self.codes[f"{what}:{code}"] += 1
            if code == E.INTERNAL:
                self.internal.append(f"{what}: {status.message}")

    def deploy(self, i: int, data: bytes) -> None:
        m = artifact_pb2.ArtifactManifest()
        m.CopyFrom(self.manifest)
        m.model_id, m.sha256, m.size_bytes = f"fz{i}", hashlib.sha256(data).hexdigest(), len(data)
        m.file_name = f"fz{i}{self.suffix}"
        res = self.stub.Upload(iter([stamp(artifact_pb2.UploadChunk(upload_id=f"fz-{i}", manifest=m, data=data,
                                                                    activate=True))]), timeout=120)
        self._record("deploy", res.status)
        if res.status.ok:  # accepted and activated: it runs
            rep = self.stub.Benchmark(stamp(benchmark_pb2.BenchmarkRequest(model_id=m.sha256, runs=1, warmup=0)),
                                      timeout=120)
            self._record("benchmark", rep.status)
            back = self.stub.Activate(stamp(agent_pb2.ActivateRequest(model_id="base")), timeout=120)
            assert back.status.ok, back.status
        if res.status.code != E.BUSY:  # stored (refused at load) or not: the store stays small
            gone = self.stub.Delete(stamp(agent_pb2.DeleteRequest(model_id=m.sha256)), timeout=60)
            self._record("delete", gone.status)

    def health(self) -> None:
        t0 = time.perf_counter()
        st = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_DEADLINE_S)
        assert st.status == health_pb2.HealthCheckResponse.SERVING
        self.health_max_s = max(self.health_max_s, time.perf_counter() - t0)

    def run(self, inputs: list[bytes], *, clients: int) -> float:
        """Deploy every input (``clients`` at a time), probing health every 100; returns the wall time."""
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            for start in range(0, len(inputs), 100):
                list(pool.map(lambda j: self.deploy(j, inputs[j]), range(start, min(start + 100, len(inputs)))))
                assert self.agent.proc.poll() is None, f"the agent died: {self.agent.log_tail()}"
                self.health()
        return time.perf_counter() - t0


def _fuzz(tmp: Path, base_file: Path, extra_args: tuple[str, ...], *, clients: int, seed: int) -> LiveFuzz:
    base = base_file.read_bytes()
    inputs = list(mutations(base, N_INPUTS, seed=seed))
    assert len(set(inputs)) == N_INPUTS and base not in inputs
    with spawn_agent(tmp / "store", device_id="fuzz", extra_args=extra_args) as agent:
        fz = LiveFuzz(agent, Artifact.from_file(base_file, model_id="base"), base_file.suffix)
        try:
            up = fz.stub.Upload(iter([stamp(artifact_pb2.UploadChunk(
                upload_id="base", manifest=fz.manifest, data=base, activate=True))]), timeout=120)
            assert up.status.ok and up.activated, up.status
            fz.wall_s = fz.run(inputs, clients=clients)
            assert agent.proc.poll() is None
            fz.health()
            active = fz.stub.ListModels(stamp(agent_pb2.ListModelsRequest()), timeout=30)
            assert active.active_sha256 == up.sha256
            rep = fz.stub.Benchmark(stamp(benchmark_pb2.BenchmarkRequest(runs=2, warmup=0)), timeout=60)
            assert rep.status.ok and rep.runs == 2  # the base model still serves
        finally:
            fz.channel.close()
    print(f"{base_file.suffix}: {N_INPUTS} inputs in {fz.wall_s:.1f} s; {dict(fz.codes)}")
    return fz


@pytest.mark.timeout(300)
def test_mutated_onnx_files_at_a_live_agent(tmp_path: Path) -> None:
    base = write_tiny_onnx(tmp_path / "base.onnx", hidden=4, vocab=1000)
    fz = _fuzz(tmp_path, base, ("--no-trial-load",), clients=2, seed=14)
    assert fz.internal == []
    assert sum(n for k, n in fz.codes.items() if k.startswith("deploy:")) == N_INPUTS
    assert fz.codes["deploy:OK"] > 0 and fz.codes["deploy:LOAD_FAILED"] > 0  # both paths exercised
    assert fz.codes["benchmark:OK"] + fz.codes["benchmark:LOAD_FAILED"] == fz.codes["deploy:OK"]
    assert fz.health_max_s < HEALTH_DEADLINE_S


@pytest.mark.timeout(900)
def test_mutated_tflite_files_at_a_live_agent(tmp_path: Path) -> None:
    base = write_tiny_tflite(tmp_path / "base.tflite")
    fz = _fuzz(tmp_path, base, ("--trial-timeout", "20"), clients=2, seed=14)
    assert fz.internal == []
    assert sum(n for k, n in fz.codes.items() if k.startswith("deploy:")) == N_INPUTS
    assert fz.codes["deploy:OK"] > 0 and fz.codes["deploy:LOAD_FAILED"] > 0
    assert fz.codes["benchmark:OK"] == fz.codes["deploy:OK"]
    assert fz.health_max_s < HEALTH_DEADLINE_S

"""Issue #13's last Done-when, on a real agent on loopback: zoo:minilm-l6 (ONNX) with its 12 FFN MatMuls as 2:4
``Sparse24MatMul`` custom ops (magnitude pruning, no fine-tuning) and the same model lowered by
``kernels.lowering`` to standard ops (the dense int8 weights through ``MatMulInteger``: how a device without the
library runs it) are deployed and benchmarked on the agent, which reports the kernel library loaded.

Structure and numbers only: node counts, both benchmarks succeed, the two files' outputs agree. No timing
assertion: the agent's two p50s are printed (their ratio, and the host's, go in ``bench/kernels.py --minilm``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import devicefit
from devicefit.agent.launch import spawn_agent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

FFN_SHAPES = {(384, 1536), (1536, 384)}


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_minilm_sparse24_ffn_and_lowered_twin_on_agent(
    tmp_path: Path, minilm_onnx: Path, minilm_bundle: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    onnx = pytest.importorskip("onnx")
    from devicefit.kernels import KernelBuildError, library_path, lowering, ops, rewrite
    from devicefit.kernels.ort_session import CUSTOM_OPS_ENV, cpu_session, session_options

    try:
        lib = library_path()
    except KernelBuildError as exc:  # no compiler here: the op cannot run, nor be checked
        pytest.skip(str(exc))
    fp32 = onnx.load(str(minilm_onnx))
    inits = {i.name: tuple(i.dims) for i in fp32.graph.initializer}
    ffn = [nd.name for nd in fp32.graph.node
           if nd.op_type == "MatMul" and nd.name and inits.get(nd.input[1]) in FFN_SHAPES]
    assert len(ffn) == 12  # 6 blocks x up, down
    sparse, replaced = rewrite.to_sparse24(fp32, names=ffn)
    lowered = lowering.lower_model(sparse)
    assert sorted(replaced) == sorted(ffn)

    def count(model: Any, op: str, domain: str | None = None) -> int:
        return sum(nd.op_type == op and (domain is None or nd.domain == domain) for nd in model.graph.node)

    assert count(sparse, "Sparse24MatMul", ops.DOMAIN) == 12
    assert count(lowered, "Sparse24MatMul") == 0 and not any(nd.domain == ops.DOMAIN for nd in lowered.graph.node)
    assert count(lowered, "MatMulInteger") == 12
    s24_path, low_path = tmp_path / "minilm-s24.onnx", tmp_path / "minilm-s24-lowered.onnx"
    onnx.save(sparse, str(s24_path))
    onnx.save(lowered, str(low_path))

    feeds = {name: np.asarray(t.numpy() if hasattr(t, "numpy") else t)
             for name, t in zip(minilm_bundle.input_names, minilm_bundle.example_inputs, strict=False)}
    outs = {}
    for key, path in (("s24", s24_path), ("lowered", low_path)):
        sess = cpu_session(str(path), session_options(threads=1, custom_ops=[lib]))
        outs[key] = sess.run(None, feeds)[0]
    exact = bool(np.array_equal(outs["s24"], outs["lowered"]))
    cos = _cos(outs["s24"], outs["lowered"])
    diff = float(np.abs(outs["s24"] - outs["lowered"]).max())
    assert exact or cos >= 0.9999, cos

    # no DEVICEFIT_ORT_CUSTOM_OPS: an agent that reports the library (built above, in the cache it shares with
    # this process) registers it in its sessions itself, deploy check included
    monkeypatch.delenv(CUSTOM_OPS_ENV, raising=False)
    agent = spawn_agent(tmp_path / "store", device_id="s24-e2e")
    try:
        with devicefit.connect(agent.url) as dev:
            info = dev.info()
            assert info["custom_kernels"] is True and info["custom_kernels_path"] == str(lib), info
            reports = {}
            # the fp32 original too, for context only (printed); the s24 file loads only with the library registered
            for key, path in (("s24", s24_path), ("lowered", low_path), ("fp32", minilm_onnx)):
                dep = dev.deploy(path, progress=False, model_id=f"minilm-{key}")
                assert dep.active and dep.first_run_ms > 0
                for threads in (None, 1):
                    rep = dev.benchmark(f"minilm-{key}", runs=20, warmup=3, threads=threads, inputs=feeds)
                    assert rep.runs >= 20 and 0 < rep.p50_ms <= rep.p90_ms
                    reports[key, threads] = rep
    finally:
        assert agent.stop() == 0
    for threads in (None, 1):
        s, low, f32 = (reports[key, threads].p50_ms for key in ("s24", "lowered", "fp32"))
        print(f"\nminilm 2:4 FFN on the agent (threads={threads or 'default'}, input "
              f"{ {k: list(v.shape) for k, v in feeds.items()} }): Sparse24MatMul p50 {s:.2f} ms, lowered p50 "
              f"{low:.2f} ms (lowered / s24 = {low / s:.2f}x), fp32 p50 {f32:.2f} ms (fp32 / s24 = {f32 / s:.2f}x); "
              f"s24 vs lowered outputs {'exact' if exact else f'cosine {cos:.8f}, max |diff| {diff:.3g}'}")

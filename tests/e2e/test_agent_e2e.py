"""End to end on real zoo models: a real agent process, digits-cnn and MiniLM deployed, benchmarked with
per-node times, rolled back, stopped."""

from __future__ import annotations

from pathlib import Path

import pytest

import devicefit
from devicefit.agent.launch import spawn_agent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_agent_end_to_end(tmp_path: Path, digits_onnx: Path, minilm_onnx: Path) -> None:
    agent = spawn_agent(tmp_path / "store", device_id="e2e-board")
    try:
        with devicefit.connect(agent.url) as dev:
            info = dev.info()
            assert info["device_id"] == "e2e-board" and "onnx" in info["formats"]

            digits = dev.deploy(digits_onnx, progress=False, model_id="digits-cnn")
            assert digits.active and digits.bytes_sent == digits_onnx.stat().st_size
            rd = dev.benchmark("digits-cnn", runs=20, warmup=3, threads=1, per_node=True)
            assert rd.source == "device:e2e-board" and rd.p50_ms <= rd.p90_ms <= rd.p99_ms
            assert {n.op_type for n in rd.per_node} >= {"Conv", "Gemm", "MaxPool"}  # names of the optimized graph
            assert 0 < rd.per_node_total_ms <= rd.per_node_e2e_ms

            minilm = dev.deploy(minilm_onnx, progress=False, model_id="minilm-l6")
            assert minilm.active and minilm.size_bytes > 80_000_000 and minilm.first_run_ms > 0
            rm = dev.benchmark(runs=8, warmup=2, threads=1, per_node=True)  # the active one: MiniLM
            assert rm.runtime["runner"] == "onnxruntime" and rm.runs == 8
            assert {n.op_type for n in rm.per_node} >= {"MatMul", "Gather"}
            # per-node kernel times add up to most of, and never more than, the end-to-end time
            assert 0.5 * rm.per_node_e2e_ms <= rm.per_node_total_ms <= rm.per_node_e2e_ms
            assert rm.mean_ms > rd.mean_ms  # a 22.7M-param transformer at seq 128 vs an 8x8 CNN

            back = dev.rollback()
            assert back["active_model_id"] == "digits-cnn" and back["active_sha256"] == digits.sha256
            assert dev.info()["active_model_id"] == "digits-cnn"
            assert {m["model_id"] for m in dev.models()} == {"digits-cnn", "minilm-l6"}
    finally:
        assert agent.stop() == 0  # graceful SIGTERM stop

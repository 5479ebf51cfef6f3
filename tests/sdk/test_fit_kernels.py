"""A fit offers devicefit's kernel techniques (2:4 sparse int8, 2- / 3-bit weights) only to an agent that reports the
kernel library, and then measures candidates written with the ``ai.devicefit`` ops on that agent (issue #13's
"the search offers 2:4-int8 and 2/3-bit options only for devices that report the kernels, and measures their real
speed there")."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from devicefit.compressor.latency import MeasurementStore
from devicefit.compressor.search.config import SearchConfig
from devicefit.compressor.search.space import SpaceConfig
from devicefit.data import Dataset
from devicefit.fitting.api import _with_kernels
from devicefit.models import load_model

pytestmark = [pytest.mark.timeout(900)]

KERNEL_OPS = {"Sparse24MatMul", "LowBitMatMul"}


def _domain_ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node if n.domain == "ai.devicefit"}


def test_without_the_library_the_kernel_techniques_are_left_out_and_the_report_says_how_to_get_them() -> None:
    cfg = SearchConfig()
    for format, kernels in (("onnx", False), ("tflite", False)):
        space, notes = _with_kernels(cfg, SimpleNamespace(kernels=kernels, format=format, device_id="pi-7"))
        assert space.space is not None and space.space.kernels is False
        if format == "onnx":  # one note naming the methods, the device and the fix
            assert len(notes) == 1 and "pi-7" in notes[0] and "python -m devicefit.kernels build" in notes[0]
            assert "int8_sparse24" in notes[0] and "lowbit_weight_only" in notes[0]
        else:  # TFLite candidates never use them: nothing to say
            assert notes == []
    space, notes = _with_kernels(cfg, SimpleNamespace(kernels=True, format="onnx", device_id="pi-7"))
    assert space.space is not None and space.space.kernels is True and notes == []
    # a space without those methods: nothing was left out, nothing to say
    quant_only = SearchConfig(space=SpaceConfig(families={"quant": ("int8_dynamic",)}))
    assert _with_kernels(quant_only, SimpleNamespace(kernels=False, format="onnx", device_id="pi-7"))[1] == []


class Mlp(nn.Module):
    """Wide Linear layers at batch 1: memory-bound, where 2:4 int8 and 2-bit weights move far fewer bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(256, 1024), nn.Linear(1024, 1024), nn.Linear(1024, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@pytest.mark.slow
def test_fit_on_an_agent_with_the_kernels_measures_candidates_written_with_its_ops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import devicefit
    from devicefit.kernels import KernelBuildError, build

    monkeypatch.setenv("DEVICEFIT_CACHE", str(tmp_path / "cache"))  # no latency model from an earlier run
    monkeypatch.setenv("DEVICEFIT_MEASUREMENTS_DB", str(tmp_path / "m.db"))
    try:
        build()  # in the fit's cache: the local agent it spawns finds it and reports it (GetInfo custom_kernels)
    except KernelBuildError as e:
        pytest.fail(f"the kernel library does not build here: {e} (install a C compiler: .ci/install-system-deps.sh)")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x = np.random.default_rng(0).normal(size=(96, 256)).astype(np.float32)
    net = Mlp().eval()
    with torch.no_grad():
        labels = net(torch.from_numpy(x)).argmax(1).numpy()
    bundle = load_model(net, example_inputs=torch.from_numpy(x[:1]), data=Dataset({"x": x}, labels, "random inputs"))
    out = tmp_path / "out"
    # only the kernel techniques are searched, so every compressed candidate uses them; a size budget fp32 (5.3 MB)
    # misses and both meet (2:4 int8 ~0.8 MB, 2-bit ~0.4 MB); accuracy is not this test's subject (no fine-tuning)
    space = SpaceConfig(families={"quant": ("int8_sparse24", "lowbit_weight_only")})
    devicefit.fit(bundle, profile="localhost", space=space, max_size_mb=1.5, max_accuracy_drop=1.0, trials=12,
                  max_measurements=3, out=out, progress=False, sensitivity_samples=32, runs=10, threads=1, probe=False)
    rep = json.loads((out / "report.json").read_text())
    assert rep["search"]["space"]["kernels"] is True  # the spawned agent reports the library it found in the cache
    assert not any("not offered" in n for n in rep["search"]["space"]["notes"])
    measured = [p for p in rep["pareto"] if p["source"] == "measured" and "fp32" not in p["tags"]]
    assert measured, rep["pareto"]
    methods = {m.split("@")[0] for p in measured for key in p["summary"] for m in key.split("+")}
    assert methods & {"int8_sparse24", "lowbit_weight_only"}, methods
    # the agent ran the custom-op files: the store holds their measurements, on onnxruntime, with per-op times
    rows = MeasurementStore(tmp_path / "m.db").query(device_id="host")
    cands = [m for m in rows if m.role != "baseline"]
    assert cands and all(m.runtime == "onnxruntime" and m.p50_ms > 0 for m in cands)
    r = rep["result"]
    model = out / "model.onnx"
    ops = _domain_ops(model)
    print(f"\nfit with kernels: fp32 {rep['baseline']['latency']['p50_ms']:.4f} ms, winner {r['latency']['p50_ms']:.4f} ms,"
          f" plan {r['plan_summary']}, size {r['size_bytes']} B, kernel ops {sorted(ops)}")
    assert r["kernels"] == bool(ops) and ops <= KERNEL_OPS
    if r["budget_met"]:  # a compressed winner: it runs the kernels, and it is measured smaller than fp32
        assert ops and r["size_bytes"] < 1.5e6

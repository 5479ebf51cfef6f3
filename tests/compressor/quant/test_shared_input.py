"""Static and dynamic int8 on layers that read one tensor (a LayerNorm feeding q / k / v, as in every
transformer block): the file must load and stay close to fp32. Regression: the QDQ pass appended its
Q/DQ pair after the consumers and ``quantize_dynamic`` then re-defined the DQ output
("Duplicate definition of name (layer_norm_DequantizeLinear_Output)")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from quant_helpers import run, sqnr

from devicefit.compressor.plan import LayerRule, Plan
from devicefit.compressor.quant import quantize_onnx
from devicefit.compressor.techniques import Int8Dynamic, Int8Static, Technique
from devicefit.data import Dataset


class SharedInput(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln = torch.nn.LayerNorm(32)
        self.q, self.k, self.v = torch.nn.Linear(32, 32), torch.nn.Linear(32, 32), torch.nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        return self.q(h) + self.k(h) * self.v(h) + h  # the residual reads the LayerNorm output in float too


@pytest.fixture(scope="module")
def shared(tmp_path_factory: Any) -> tuple[Path, Dataset, Dataset]:
    from devicefit.compressor.export import export_onnx

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    calib, ev = (Dataset({"x": rng.normal(size=(n, 8, 32)).astype(np.float32)}, description="random") for n in (32, 16))
    path = tmp_path_factory.mktemp("shared") / "shared.onnx"
    export_onnx(SharedInput().eval(), (torch.from_numpy(calib.inputs["x"][:2]),), path, input_names=["x"],
                output_names=["y"], dynamic_axes={"x": {0: "batch"}}, verify=ev)
    return path, calib, ev


@pytest.mark.parametrize(
    "schemes",
    [(Int8Static(), Int8Static(), Int8Dynamic()), (Int8Static(), Int8Dynamic(), Int8Dynamic()),
     (Int8Static(), Int8Dynamic(), None)],
    ids=["SSD", "SDD", "SDF"],
)
def test_static_and_dynamic_on_one_input_load(shared: tuple[Path, Dataset, Dataset], tmp_path: Path,
                                              schemes: tuple[Technique | None, ...]) -> None:
    src, calib, ev = shared
    plan = Plan(tuple(LayerRule(name, quant=t) for name, t in zip("qkv", schemes, strict=True) if t is not None))
    out = tmp_path / "mixed.onnx"
    res = quantize_onnx(src, out, plan, layer_names=["q", "k", "v"], calib=calib)
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])  # raised "Duplicate definition" before
    assert {"q", "k"} <= set(res.schemes)
    assert res.float_fallback_layers == []
    assert sqnr(run(src, ev), run(out, ev)) > 20

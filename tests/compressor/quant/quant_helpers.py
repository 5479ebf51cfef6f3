"""Helpers of the quant tests (imported by conftest.py and the tests). A tiny torch model with every layer pattern the exporter produces (Conv, 2-D Linear → Gemm, 3-D Linear →
MatMul + Add, Linear without bias, LayerNorm in front of Linears), exported once per module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from devicefit.data import Dataset


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.fc1 = torch.nn.Linear(8 * 4 * 4, 64)
        self.ln = torch.nn.LayerNorm(16)
        self.fc2 = torch.nn.Linear(16, 32)
        self.fc3 = torch.nn.Linear(32, 16, bias=False)
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        h = torch.nn.functional.avg_pool2d(h, 2).flatten(1)
        h = torch.relu(self.fc1(h)).reshape(x.shape[0], 4, 16)  # 3-D from here: MatMul layers
        h = self.fc3(torch.nn.functional.gelu(self.fc2(self.ln(h))))
        return self.head(h.mean(dim=1))


LAYERS = ["conv", "fc1", "fc2", "fc3", "head"]


@dataclass
class TinyCase:
    module: torch.nn.Module
    onnx: Path
    calib: Dataset
    eval: Dataset


def make_data(n: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 1, 8, 8)).astype(np.float32)
    x[:, :, 2, :] *= 4.0  # a few large activations, like real data
    return Dataset({"x": x}, description=f"{n} random 8x8 images")


def build_tiny(tmp_path_factory: Any) -> TinyCase:
    from devicefit.compressor.export import export_onnx

    torch.manual_seed(0)
    torch.set_num_threads(1)
    m = Tiny().eval()
    calib, ev = make_data(96, 0), make_data(64, 1)
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    export_onnx(m, (torch.from_numpy(calib.inputs["x"][:2]),), path, input_names=["x"], output_names=["logits"],
                dynamic_axes={"x": {0: "batch"}}, verify=ev)
    return TinyCase(m, path, calib, ev)


def run(path: Path, data: Dataset) -> np.ndarray:
    from devicefit.runtime import run_onnx

    return run_onnx(path, data)


def sqnr(ref: np.ndarray, test: np.ndarray) -> float:
    from devicefit.metrics import sqnr_db

    return sqnr_db(ref, test)

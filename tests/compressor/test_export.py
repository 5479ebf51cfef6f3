"""compressor.export: single-file dynamo export, dynamic axes, names, parity checks that can fail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from devicefit.bundle import ModelBundle
from devicefit.compressor.export import export_bundle, export_onnx, torch_outputs
from devicefit.data import Dataset
from devicefit.errors import ExportError
from devicefit.metrics import cosine, top1_agreement
from devicefit.runtime import run_onnx


class Two(nn.Module):
    """Two inputs, one output whose natural name collides with an intermediate ('embedding')."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.proj = nn.Linear(8, 4)

    def forward(self, ids: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.proj(self.emb(ids)).mean(1) * scale


def _two_data(n: int = 13) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset({"ids": rng.integers(0, 20, (n, 6)), "scale": rng.random((n, 1)).astype(np.float32)})


def test_export_names_axes_single_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Two()
    data = _two_data()
    example = (torch.from_numpy(data.inputs["ids"][:1]), torch.from_numpy(data.inputs["scale"][:1]))  # batch 1
    res = export_onnx(
        model, example, tmp_path / "two.onnx",
        input_names=["ids", "scale"], output_names=["embedding"],
        dynamic_axes={"ids": {0: "batch", 1: "seq"}, "scale": {0: "batch"}}, verify=data,
    )
    assert [p.name for p in tmp_path.iterdir()] == ["two.onnx"]  # one file, no external data
    assert res.size_bytes == (tmp_path / "two.onnx").stat().st_size and res.verified_samples == 13
    assert res.cosine > 0.99999 and res.max_abs_error < 1e-5
    m = onnx.load(str(res.path))
    dims = {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
            for vi in [*m.graph.input, *m.graph.output]}
    assert dims == {"ids": ["batch", "seq"], "scale": ["batch", 1], "embedding": ["batch", 4]}
    assert {"emb.weight", "proj.weight", "proj.bias"} <= {i.name for i in m.graph.initializer}
    # dynamic seq: run a shorter sequence at another batch size
    short = Dataset({"ids": data.inputs["ids"][:, :3], "scale": data.inputs["scale"]})
    got = run_onnx(res.path, short, input_names=["ids", "scale"], batch_size=4)
    np.testing.assert_allclose(got, torch_outputs(model, short, ["ids", "scale"]), atol=1e-5)
    assert res.to_dict() == {"path": str(res.path), "size_bytes": res.size_bytes,
                             "max_abs_error": res.max_abs_error, "cosine": res.cosine}


class Liar(nn.Module):
    """Exports a different function than it runs eagerly: a real parity break."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return -y + 1.0 if torch.compiler.is_exporting() else y


class NaNs(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x - 10.0)


def test_parity_break_raises(tmp_path: Path) -> None:
    x = torch.randn(3, 4)
    with pytest.raises(ExportError, match="disagrees with torch"):
        export_onnx(Liar(), (x,), tmp_path / "liar.onnx", input_names=["x"], output_names=["y"],
                    dynamic_axes={"x": {0: "batch"}})


def test_non_finite_raises(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="finite=False"):
        export_onnx(NaNs(), (torch.rand(3, 4),), tmp_path / "nan.onnx", input_names=["x"], output_names=["y"],
                    dynamic_axes={"x": {0: "batch"}})


def test_atol_bound(tmp_path: Path) -> None:
    model = nn.Linear(4, 4)
    with pytest.raises(ExportError, match="atol"):
        export_onnx(model, (torch.randn(3, 4),), tmp_path / "l.onnx", input_names=["x"], output_names=["y"],
                    dynamic_axes={"x": {0: "batch"}}, atol=-1.0)


def test_unexportable_model_is_an_export_error(tmp_path: Path) -> None:
    class DataDependent(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[x > 0] if int(x.sum()) % 2 else x

    with pytest.raises(ExportError, match=r"torch\.onnx\.export"):
        export_onnx(DataDependent(), (torch.ones(2, 3),), tmp_path / "d.onnx", input_names=["x"],
                    output_names=["y"], dynamic_axes={"x": {0: "batch"}})


@pytest.mark.slow
def test_digits_export(digits_bundle: ModelBundle, digits_onnx: Path) -> None:
    assert digits_bundle.eval is not None and digits_bundle.eval.labels is not None and digits_bundle.module is not None
    ref = torch_outputs(digits_bundle.module, digits_bundle.eval, ["x"])
    got = run_onnx(digits_onnx, digits_bundle.eval, batch_size=37)
    assert cosine(ref, got) >= 0.9999 and top1_agreement(ref, got) == 1.0
    assert np.mean(got.argmax(1) == digits_bundle.eval.labels) >= 0.97


@pytest.mark.slow
def test_minilm_export(minilm_bundle: ModelBundle, minilm_onnx: Path) -> None:
    assert [p.name for p in minilm_onnx.parent.iterdir()] == ["minilm.onnx"]  # no external data
    m = onnx.load(str(minilm_onnx), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)
    assert [i.name for i in m.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in m.graph.output] == ["embedding"]
    names = {i.name for i in m.graph.initializer}
    linears = [n for n, mod in minilm_bundle.module.named_modules() if isinstance(mod, nn.Linear)]  # type: ignore[union-attr]
    assert len(linears) == 36 and all(f"{n}.weight" in names for n in linears)  # quant maps layers by these
    assert minilm_bundle.eval is not None and minilm_bundle.module is not None
    ev = minilm_bundle.eval.take(64)
    ref = torch_outputs(minilm_bundle.module, ev, minilm_bundle.input_names)
    got = run_onnx(minilm_onnx, ev, input_names=minilm_bundle.input_names, batch_size=48)
    assert cosine(ref, got) >= 0.9999
    n = int(ev.inputs["attention_mask"][:8].sum(1).max())  # dynamic seq axis: drop the all-padding tail
    short = Dataset({k: v[:8, :n] for k, v in ev.inputs.items()})
    assert cosine(ref[:8], run_onnx(minilm_onnx, short, input_names=minilm_bundle.input_names)) >= 0.9999


@pytest.mark.slow
def test_effnet_export(effnet_bundle: ModelBundle, effnet_onnx: Path) -> None:
    ev = effnet_bundle.eval
    assert ev is not None and effnet_bundle.module is not None
    sub = ev.take(24)
    ref = torch_outputs(effnet_bundle.module, sub, ["x"], batch_size=8)
    got = run_onnx(effnet_onnx, sub, batch_size=5)
    assert cosine(ref, got) >= 0.9999 and top1_agreement(ref, got) == 1.0


def test_export_bundle_requires_module(tmp_path: Path) -> None:
    from devicefit.errors import UserInputError

    b = ModelBundle("m.onnx", None, (), ["x"], ["y"], "cosine")
    with pytest.raises(UserInputError, match="needs the torch model"):
        export_bundle(b, tmp_path / "o.onnx")

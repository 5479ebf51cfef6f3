"""``devicefit compress``: JSON contract, shortcuts + plan files, one-line errors with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from devicefit.cli import main


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 64, 32)
        self.head = torch.nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(torch.relu(self.conv(x)).flatten(1))))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from devicefit.compressor.export import export_onnx
    from devicefit.data import Dataset

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("cli")
    x = np.random.default_rng(0).normal(size=(64, 1, 8, 8)).astype(np.float32)
    net = Net().eval()
    with torch.no_grad():
        labels = net(torch.from_numpy(x)).argmax(1).numpy()
    export_onnx(net, (torch.from_numpy(x[:2]),), d / "net.onnx", input_names=["x"], output_names=["y"],
                dynamic_axes={"x": {0: "batch"}}, verify=Dataset({"x": x}))
    np.savez(d / "data.npz", x=x, labels=labels)
    return d / "net.onnx", d / "data.npz"


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # exactly one JSON object
    return json.loads(out[0])


def test_quant_json(files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, data = files
    out = tmp_path / "q.onnx"
    d = _json(capsys, ["compress", str(model), "--quant", "int8_static:calibration=mse", "--data", str(data),
                       "-o", str(out), "--json", "--no-progress"])
    assert d["path"] == str(out) and out.stat().st_size == d["size_bytes"]
    assert d["compression_ratio"] > 2.0  # tiny model: graph metadata is a big share of the file
    assert d["metric"]["name"] == "accuracy" and d["metric"]["baseline"] == 1.0
    assert d["metric"]["drop"] == pytest.approx(d["metric"]["baseline"] - d["metric"]["compressed"])
    assert d["float_fallback_layers"] == [] and d["params"] > 0 and d["macs"] > 0
    assert d["plan"]["layers"][0]["quant"] == {"method": "int8_static", "calibration": "mse", "per_channel": True,
                                               "percentile": 99.999}


@pytest.mark.parametrize("scheme", ["int8-static", "int8_static"])
def test_scheme_names_accept_hyphen_and_underscore(files: tuple[Path, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str], scheme: str) -> None:
    model, data = files
    plan = tmp_path / "plan.yaml"
    plan.write_text("version: 1\nlayers:\n  - match: head\n    quant: {method: int8-dynamic}\n")
    d = _json(capsys, ["compress", str(model), "--quant", scheme, "--plan", str(plan), "--data", str(data),
                       "-o", str(tmp_path / f"{scheme}.onnx"), "--json", "--no-progress"])
    assert d["plan"]["layers"][0]["quant"]["method"] == "int8_static"
    assert d["plan"]["layers"][1]["quant"] == {"method": "int8_dynamic", "per_channel": True}
    assert d["quant"]["schemes"]["head"] == "int8_dynamic(per_channel=True)"


def test_plan_file_overrides_shortcut(files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, data = files
    plan = tmp_path / "plan.yaml"
    plan.write_text("version: 1\nlayers:\n  - match: head\n    quant: {method: float}\n")
    d = _json(capsys, ["compress", str(model), "--quant", "int4", "--plan", str(plan), "--data", str(data),
                       "-o", str(tmp_path / "p.onnx"), "--json", "--no-progress"])
    assert set(d["quant"]["schemes"]) == {"fc"}  # int4 is Linear-only; head kept float by the file
    assert d["quant"]["skipped"].keys() == {"conv"}
    assert d["int_ops"] == {"MatMulNBits": 1}


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--quant", "int1"], "int8_dynamic, int8_static"),
        (["--quant", "int8_static:calib=mse"], "calibration"),
        (["--prune", "magnitude:0.5"], "torch model"),
        (["--lowrank", "svd"], "no number"),
        ([], "nothing to do"),
    ],
)
def test_errors_are_one_line_exit_2(files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    argv: list[str], needle: str) -> None:
    model, data = files
    rc = main(["compress", str(model), *argv, "--data", str(data), "-o", str(tmp_path / "x.onnx"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err


def test_no_data_measures_fidelity_on_random_inputs(files: tuple[Path, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = files
    d = _json(capsys, ["compress", str(model), "--quant", "int8_dynamic", "-o", str(tmp_path / "n.onnx"), "--json",
                       "--no-progress"])
    assert d["metric"]["name"] == "top1_agreement" and "random inputs" in d["metric"]["data"]
    assert d["fidelity"]["cosine"] > 0.99


def test_kernels_flag_picks_devicefits_ops_or_standard_ones(files: tuple[Path, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """``--kernels devicefit`` writes the 2:4 layers as devicefit's ``Sparse24MatMul``; the default writes the standard
    ops any onnxruntime runs, with the same outputs."""
    model, data = files
    own = _json(capsys, ["compress", str(model), "--quant", "int8_sparse24", "--kernels", "devicefit", "--data", str(data),
                         "-o", str(tmp_path / "own.onnx"), "--json", "--no-progress"])
    std = _json(capsys, ["compress", str(model), "--quant", "int8-sparse24", "--data", str(data),
                         "-o", str(tmp_path / "std.onnx"), "--json", "--no-progress"])
    assert own["int_ops"].get("Sparse24MatMul") == 2 and "Sparse24MatMul" not in std["int_ops"]  # fc and head
    assert std["int_ops"].get("MatMulInteger", 0) >= 2
    assert own["float_fallback_layers"] == [] == std["float_fallback_layers"]
    assert own["fidelity"] == std["fidelity"] and own["metric"] == std["metric"]
    assert own["quant"]["skipped"] == std["quant"]["skipped"] and "conv" in own["quant"]["skipped"]  # Linear only
    with pytest.raises(SystemExit) as bad:  # argparse names the valid choices
        main(["compress", str(model), "--quant", "int8_sparse24", "--kernels", "ours", "-o", str(tmp_path / "x.onnx")])
    assert bad.value.code == 2 and "'standard', 'devicefit'" in capsys.readouterr().err

"""load_model: every input kind (zoo, .onnx, .pt2, package.module:factory, nn.Module) and bad inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from devicefit.cli import main
from devicefit.data import Dataset
from devicefit.errors import ModelLoadError, UserInputError
from devicefit.models import load_model

HERE = Path(__file__).parent


@pytest.fixture
def factories(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.syspath_prepend(str(HERE))
    return "factories_helper"


@pytest.fixture
def tiny_npz(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.standard_normal((20, 6)).astype(np.float32), labels=rng.integers(0, 3, 20))
    return path


def test_factory_module_takes_shapes_from_data(factories: str, tiny_npz: Path) -> None:
    b = load_model(f"{factories}:tiny_module", data=tiny_npz)
    assert b.module is not None and b.input_names == ["x"]
    assert tuple(b.example_inputs[0].shape) == (2, 6)
    assert b.metric == "accuracy" and b.eval is not None and len(b.eval) == 20
    assert b.dynamic_axes == {"x": {0: "batch"}}


def test_factory_pair_without_data(factories: str) -> None:
    b = load_model(f"{factories}:tiny_pair")
    assert b.input_names == ["x"] and b.calib is None
    assert b.metric == "top1_agreement"  # [N, 3] output, no labels
    out = b.module(*b.example_inputs)  # type: ignore[misc]
    assert tuple(out.shape) == (2, 3)


def test_factory_module_without_data_is_an_error(factories: str) -> None:
    with pytest.raises(ModelLoadError, match="--data"):
        load_model(f"{factories}:tiny_module")


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("factories_helper:broken", "factory exploded"),
        ("factories_helper:not_a_module", "not a torch.nn.Module"),
        ("factories_helper:missing", "no callable"),
        ("no_such_pkg_xyz.mod:make", "cannot import"),
    ],
)
def test_bad_factories(factories: str, spec: str, match: str) -> None:
    with pytest.raises(ModelLoadError, match=match):
        load_model(spec)


def test_module_object(factories: str) -> None:
    import factories_helper  # type: ignore[import-not-found]

    b = load_model(factories_helper.tiny_module(), example_inputs=torch.zeros(4, 6))
    assert b.input_names == ["x"] and b.source == "nn.Module"
    assert len(b.example_inputs) == 1


def test_pt2_roundtrip(factories: str, tmp_path: Path, tiny_npz: Path) -> None:
    import factories_helper  # type: ignore[import-not-found]

    model, example = factories_helper.tiny_pair()
    ep = torch.export.export(model, example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "tiny.pt2"
    torch.export.save(ep, str(path))
    b = load_model(str(path), data=tiny_npz)
    assert b.input_names == ["x"] and b.dynamic_axes == {"x": {0: "batch"}}
    assert b.metric == "accuracy"
    x = torch.randn(5, 6)
    torch.testing.assert_close(b.module(x), model(x))  # type: ignore[misc]
    # the unlifted module refuses .eval() by itself: load_model makes it a no-op so downstream code works
    assert b.module is not None and b.module.eval() is b.module
    from devicefit.compressor.analysis import analyze
    from devicefit.compressor.export import export_bundle

    a = analyze(b.module, b.example_inputs)
    assert [(li.name, li.type, li.params, li.macs) for li in a.layers] == [
        ("fc1", "Linear", 112, 96), ("fc2", "Linear", 51, 48)]
    assert a.layer("fc1").input_shape == [1, 6] and a.layer("fc2").output_shape == [1, 3]
    res = export_bundle(b, tmp_path / "from_pt2.onnx")
    assert res.cosine >= 0.9999 and res.verified_samples == 20


def test_onnx_file(factories: str, tmp_path: Path) -> None:
    from devicefit.compressor.export import export_bundle

    src = load_model(f"{factories}:tiny_pair")
    path = export_bundle(src, tmp_path / "tiny.onnx").path
    b = load_model(str(path))
    assert b.module is None and b.onnx_path == path
    assert b.input_names == ["x"] and b.output_names == ["output"]
    assert b.dynamic_axes == {"x": {0: "batch"}}
    assert b.example_inputs[0].shape == (1, 6)


def test_data_dataset_overrides_and_validates_names(factories: str) -> None:
    ds = Dataset({"x": np.zeros((3, 6), np.float32)})
    b = load_model(f"{factories}:tiny_pair", data=ds)
    assert b.calib is ds and b.eval is ds
    with pytest.raises(UserInputError, match="lacks input"):
        load_model(f"{factories}:tiny_pair", data=Dataset({"y": np.zeros((3, 6), np.float32)}))


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("missing.onnx", "not found"),
        ("missing.pt2", "not found"),
        ("zoo:nope", "zoo:digits-cnn"),
        ("what is this", "zoo:NAME"),
    ],
)
def test_bad_specs(spec: str, match: str) -> None:
    with pytest.raises(ModelLoadError, match=match):
        load_model(spec)


def test_corrupt_onnx(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07this is not a protobuf model" * 10)
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        load_model(str(bad))


def test_corrupt_pt2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match=r"torch\.export"):
        load_model(str(bad))


@pytest.mark.parametrize("kind", ["missing", "corrupt", "zoo", "factory"])
def test_cli_bad_models_exit_2_with_one_line(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    spec = {"missing": str(tmp_path / "nope.onnx"), "corrupt": str(bad), "zoo": "zoo:nope",
            "factory": "no_such_pkg_xyz:make"}[kind]
    assert main(["inspect", spec]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("devicefit: error:") and "fix:" in err[0]


def test_cli_subprocess_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "devicefit.cli", "export", "zoo:nope", "-o", str(tmp_path / "m.onnx")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "unknown zoo model" in proc.stderr


@pytest.mark.slow
def test_zoo_with_npz_labels(digits_bundle: object, tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    x = np.random.default_rng(1).random((12, 1, 8, 8)).astype(np.float32)
    np.savez(path, x=x, labels=np.arange(12) % 10)
    b = load_model("zoo:digits-cnn", data=path)
    assert b.metric == "accuracy" and b.eval is not None and len(b.eval) == 12
    assert b.calib is b.eval

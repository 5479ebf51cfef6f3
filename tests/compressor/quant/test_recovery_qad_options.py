"""Int8Static's distillation schedule and augmentation options: validation, and that they reach ``distill``
(a tiny CNN, not the zoo)."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from devicefit.compressor.plan import Plan
from devicefit.compressor.quant import calibration as C
from devicefit.compressor.quant import quantize_onnx
from devicefit.compressor.quant.recovery import qad
from devicefit.compressor.techniques import Int8Static
from devicefit.data import Dataset
from devicefit.errors import UserInputError


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.relu6(self.stem(x))
        return self.fc(torch.nn.functional.relu6(self.dw(h)).mean(dim=(2, 3)))


def _data(n: int, seed: int) -> Dataset:
    return Dataset({"x": np.random.default_rng(seed).normal(size=(n, 3, 16, 16)).astype(np.float32)})


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    from devicefit.compressor.export import export_onnx

    torch.manual_seed(0)
    torch.set_num_threads(1)
    m = Net().eval()
    path = tmp_path_factory.mktemp("qadopt") / "net.onnx"
    export_onnx(m, (torch.from_numpy(_data(2, 9).inputs["x"]),), path, input_names=["x"], output_names=["logits"],
                dynamic_axes={"x": {0: "batch"}}, verify=_data(8, 8))
    return m, path


def test_schedule_and_augment_validation_and_labels() -> None:
    assert Int8Static().distill_schedule == "constant" and Int8Static().distill_augment is False
    assert Int8Static().label() == "int8_static(calibration=mse,per_channel=True,percentile=99.999)"  # plan hashes
    assert "distill_schedule" not in Int8Static().to_dict() and "distill_augment" not in Int8Static().to_dict()
    cos = Int8Static(distill_steps=5, distill_schedule="cosine", distill_augment=True)
    assert cos.label().endswith("distill_steps=5,distill_schedule=cosine,distill_augment=True)"), cos.label()
    with pytest.raises(UserInputError, match="distill_schedule") as e:
        Int8Static(distill_schedule="linear")
    assert "'constant', 'cosine'" in str(e.value) + str(getattr(e.value, "hint", "")) + repr(e.value.args)
    for bad in ("cos", "", None, 1):
        with pytest.raises(UserInputError, match="distill_schedule"):
            Int8Static(distill_schedule=bad)  # type: ignore[arg-type]
    for bad in ("yes", 1, None):
        with pytest.raises(UserInputError, match="distill_augment"):
            Int8Static(distill_augment=bad)  # type: ignore[arg-type]


def test_schedule_and_augment_reach_distill(cnn: tuple[torch.nn.Module, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from devicefit.compressor.quant import recovery

    seen: list[dict[str, Any]] = []
    real = recovery.distill

    def spy(*a: Any, **kw: Any) -> Any:
        seen.append(kw)
        return real(*a, **kw)

    monkeypatch.setattr(recovery, "distill", spy)
    base = Int8Static(rounding="nearest", bias_correction=False, distill_steps=4)
    for i, (tech, cosine, augment) in enumerate(((base, False, False),
                                                 (replace(base, distill_schedule="cosine"), True, False),
                                                 (replace(base, distill_augment=True), False, True))):
        res = quantize_onnx(cnn[1], tmp_path / f"q{i}.onnx", Plan.uniform(quant=tech),
                            calib=_data(32, 0), module=cnn[0])
        assert seen[-1]["cosine_decay"] is cosine and seen[-1]["augment"] is augment, seen[-1]
        note = res.notes[-1]
        assert note.startswith("quantization-aware distillation on"), res.notes
        assert ("cosine-decayed" in note) is cosine and ("random-resized crops" in note) is augment, note
    assert len(seen) == 3


def test_cosine_decay_anneals_to_zero(cnn: tuple[torch.nn.Module, Path], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    lrs: list[list[float]] = []
    step = torch.optim.Adam.step

    def record(self: torch.optim.Adam, *a: Any, **kw: Any) -> Any:
        lrs.append([g["lr"] for g in self.param_groups])
        return step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.Adam, "step", record)
    q = _quantized(cnn, tmp_path)
    feeds = C.batches(_data(32, 0), q, batch_size=16)
    for cosine in (False, True):
        lrs.clear()
        qad.distill(onnx.load(cnn[1]), q, feeds, steps=10, lr=0.05, batch_size=8, eval_every=5, cosine_decay=cosine)
        assert len(lrs) == 10 and lrs[0][0] == pytest.approx(0.05)
        if cosine:  # lr_t = 0.05 (1 + cos(pi t / 10)) / 2 before step t + 1
            assert lrs[-1][0] == pytest.approx(0.05 * (1 + np.cos(np.pi * 9 / 10)) / 2)
            assert all(a[0] > b[0] for a, b in pairwise(lrs))
        else:
            assert all(g == lrs[0] for g in lrs)


def _quantized(cnn: tuple[torch.nn.Module, Path], tmp_path: Path) -> onnx.ModelProto:
    out = tmp_path / "q.onnx"
    quantize_onnx(cnn[1], out, Plan.uniform(quant=Int8Static(rounding="nearest", bias_correction=False)),
                  calib=_data(32, 0), module=cnn[0])
    return onnx.load(out)


def test_augment_crops_and_flips_and_trains_on_the_teacher_of_the_crops(cnn: tuple[torch.nn.Module, Path],
                                                                      tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    x = _data(64, 3).inputs["x"]
    rng = np.random.default_rng(0)
    y = qad._augment(x, rng, 0.35)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not np.allclose(y, x) and y.min() >= x.min() - 1e-6 and y.max() <= x.max() + 1e-6  # bilinear: no overshoot
    ramp = np.broadcast_to(np.linspace(-1, 1, 16, dtype=np.float32), (64, 3, 16, 16)).copy()  # rises along W
    slope = np.sign(np.diff(qad._augment(ramp, rng, 0.35)[:, 0, 8], axis=1).sum(1))
    assert 16 < (slope > 0).sum() < 48 and (slope != 0).all(), slope  # about half mirrored, none flat
    ones, zeros = np.ones((4, 3, 16, 16), np.float32), np.zeros((4, 3, 16, 16), np.float32)
    mixed = qad._augment(np.concatenate([ones, zeros]), np.random.default_rng(0), 0.35, mixup=1.0)
    means = mixed.mean(axis=(1, 2, 3))  # blends of a constant-1 and a constant-0 batch: means strictly between
    assert np.allclose(mixed, means[:, None, None, None], atol=1e-6) and ((means > 0.001) & (means < 0.999)).sum() >= 4
    assert qad._is_image({"x": x}) and not qad._is_image({"x": x[:, :, 0, :]})
    assert not qad._is_image({"x": x, "y": x})

    # the teacher is run on every augmented training batch (not looked up from the stored calibration outputs)
    q, fp32 = _quantized(cnn, tmp_path), onnx.load(cnn[1])
    feeds = C.batches(_data(64, 0), q, batch_size=16)
    runs: list[tuple[int, ...]] = []
    sess_fn = qad.C.session

    def counting(*a: Any, **kw: Any) -> Any:
        s = sess_fn(*a, **kw)

        class Wrap:
            def get_outputs(self) -> Any:
                return s.get_outputs()

            def run(self, names: Any, feed: dict[str, np.ndarray]) -> Any:
                runs.append(feed["x"].shape)
                return s.run(names, feed)

        return Wrap()

    monkeypatch.setattr(qad.C, "session", counting)
    base = qad.distill(fp32, _copy(q), feeds, steps=30, lr=0.05, batch_size=8,
                       eval_every=10)
    n_plain = len(runs)
    r = qad.distill(fp32, q, feeds, steps=30, lr=0.05, batch_size=8, eval_every=10, augment=True)
    assert len(runs) - n_plain == n_plain + 30 and runs[-1] == (8, 3, 16, 16)  # the 4 teacher batches + 30 crops
    assert not r.skipped and r.heldout_after < 0.9 * r.heldout_before, r
    assert r.heldout_after != base.heldout_after  # trained on other data


def _copy(m: onnx.ModelProto) -> onnx.ModelProto:
    c = onnx.ModelProto()
    c.CopyFrom(m)
    return c

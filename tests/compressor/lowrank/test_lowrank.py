"""Low-rank factorization: rank math, refusals, activation-aware vs plain SVD, conv decompositions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from devicefit.compressor.lowrank import (
    LowRankConv1x1,
    LowRankConv2d,
    LowRankLinear,
    LowRankRefused,
    apply_lowrank,
    asvd_linear,
    rank_for_energy,
    spatial_svd_conv,
    svd_linear,
    tucker2_conv,
)
from devicefit.compressor.prune.calib import collect_input_stats
from devicefit.compressor.techniques import LowRank
from devicefit.data import Dataset

torch.set_num_threads(1)


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(("n_in", "n_out", "ratio"), [(100, 60, 0.5), (384, 1536, 0.5), (64, 64, 0.3), (300, 20, 0.7)])
def test_ratio_removes_the_requested_fraction_within_one_rank(n_in: int, n_out: int, ratio: float) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(n_in, n_out)
    new = svd_linear(layer, ratio=ratio)
    assert isinstance(new, LowRankLinear)
    assert (new.in_features, new.out_features) == (n_in, n_out)
    removed = 1 - (new.rank * (n_in + n_out)) / (n_in * n_out)
    one_rank = (n_in + n_out) / (n_in * n_out)
    assert ratio <= removed <= ratio + one_rank + 1e-9
    assert [n for n, _ in new.named_children()] == ["down", "up"]
    assert new.down.bias is None and new.up.bias is not None


def test_refuses_ranks_that_do_not_reduce_macs() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(64, 64)  # random: almost flat spectrum, 99.9 % energy needs nearly full rank
    with pytest.raises(LowRankRefused, match="would not reduce MACs"):
        svd_linear(layer, energy=0.999)
    tiny = nn.Linear(3, 2)  # break-even rank 1.2; 10 % removal leaves rank 1... 0.3 removal leaves rank 0
    with pytest.raises(LowRankRefused, match="rank 0"):
        svd_linear(tiny, ratio=0.5)
    with pytest.raises(LowRankRefused, match="tucker2"):
        svd_linear(nn.Conv2d(4, 4, 3))
    with pytest.raises(LowRankRefused, match="depthwise"):
        tucker2_conv(nn.Conv2d(8, 8, 3, groups=8), ratio=0.5)


def test_energy_picks_the_true_rank() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(80, 60)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(60, 5) @ torch.randn(5, 80))
    new = svd_linear(layer, energy=0.9999)
    assert new.rank == 5  # type: ignore[union-attr]
    x = torch.randn(16, 80)
    torch.testing.assert_close(new(x), layer(x), atol=1e-4, rtol=1e-4)
    assert rank_for_energy(torch.tensor([4.0, 3.0]), 0.5) == 1 and rank_for_energy(torch.tensor([4.0, 3.0]), 0.7) == 2


def _skewed_data(n: int = 2048, d: int = 96) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, : d // 8] *= 15.0  # outlier channels
    mix = rng.normal(size=(d, d)).astype(np.float32) * 0.1
    return x + x @ mix  # correlated channels


@pytest.mark.parametrize("method", ["whiten", "scale"])
def test_activation_aware_beats_plain_svd_at_equal_params(method: str) -> None:
    torch.manual_seed(0)
    x = _skewed_data()
    layer = nn.Sequential(nn.Linear(96, 64)).eval()
    data = Dataset({"x": x})
    stats = collect_input_stats(layer, ["0"], data, ["x"], max_samples=len(x), batch_size=512, gram=True)
    plain = svd_linear(layer[0], ratio=0.6)
    aware = asvd_linear(layer[0], stats["0"], ratio=0.6, method=method)
    assert _params(plain) == _params(aware)
    xt = torch.from_numpy(x)
    ref = layer(xt)
    err_plain = float(((plain(xt) - ref) ** 2).mean().detach())
    err_aware = float(((aware(xt) - ref) ** 2).mean().detach())
    assert err_aware < 0.7 * err_plain, (err_aware, err_plain)


def test_one_by_one_conv_factorizes_into_two_convs() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 48, 1, stride=2)
    new = svd_linear(conv, ratio=0.5)
    assert isinstance(new, LowRankConv1x1)
    x = torch.randn(2, 32, 8, 8)
    assert new(x).shape == conv(x).shape == (2, 48, 4, 4)


def test_tucker2_shapes_and_exactness() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1)
    with torch.no_grad():  # exactly Tucker rank (4, 6)
        core = torch.randn(6, 4, 3, 3)
        conv.weight.copy_(torch.einsum("rskl,or,is->oikl", core, torch.randn(32, 6), torch.randn(16, 4)))
    new = tucker2_conv(conv, energy=0.99999, spatial=(8, 8, 4, 4))
    assert isinstance(new, LowRankConv2d)
    assert [n for n, _ in new.named_children()] == ["down", "core", "up"]
    assert new.down.kernel_size == (1, 1) and new.down.out_channels == 4 and new.down.in_channels == 16
    assert new.core.kernel_size == (3, 3) and new.core.stride == (2, 2) and (new.core.in_channels, new.core.out_channels) == (4, 6)
    assert new.up.kernel_size == (1, 1) and new.up.out_channels == 32
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(new(x), conv(x), atol=1e-4, rtol=1e-4)
    by_ratio = tucker2_conv(conv, ratio=0.5)
    assert _params(by_ratio) <= 0.5 * _params(conv) + 32
    with pytest.raises(LowRankRefused, match="would not reduce"):
        tucker2_conv(nn.Conv2d(16, 32, 3), energy=1.0)


def test_spatial_svd_separable_kernel_is_exact() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, padding=1)
    with torch.no_grad():  # rank-2 over [(in, kh), (out, kw)]
        a, b = torch.randn(8 * 3, 2), torch.randn(2, 12 * 3)
        conv.weight.copy_((a @ b).reshape(8, 3, 12, 3).permute(2, 0, 1, 3))
    new = spatial_svd_conv(conv, energy=0.99999)
    assert new.down.kernel_size == (3, 1) and new.up.kernel_size == (1, 3) and new.down.out_channels == 2
    x = torch.randn(2, 8, 10, 10)
    torch.testing.assert_close(new(x), conv(x), atol=1e-4, rtol=1e-4)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.fc = nn.Linear(16, 64)
        self.out = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.dw(torch.relu(self.conv(x)))).mean(dim=(2, 3))
        return self.out(torch.relu(self.fc(x)))


def test_apply_lowrank_names_and_refusals() -> None:
    torch.manual_seed(0)
    net = Net().eval()
    data = Dataset({"x": np.random.default_rng(0).normal(size=(32, 8, 6, 6)).astype(np.float32)})
    plan = {
        "conv": LowRank(ratio=0.5, kind="tucker2"),
        "dw": LowRank(ratio=0.5, kind="tucker2"),
        "fc": LowRank(ratio=0.5, kind="asvd"),
        "out": LowRank(ratio=None, energy=0.9999, kind="svd"),
    }
    res = apply_lowrank(net, plan, data=data, input_names=["x"], example_inputs=(torch.zeros(1, 8, 6, 6),))
    assert set(res.applied) == {"conv", "fc"}
    assert "depthwise" in res.refused["dw"] and "would not reduce" in res.refused["out"]
    names = {n for n, _ in net.named_modules()}
    assert {"conv.down", "conv.core", "conv.up", "fc.down", "fc.up"} <= names
    assert isinstance(net.dw, nn.Conv2d) and isinstance(net.out, nn.Linear)
    assert net(torch.zeros(3, 8, 6, 6)).shape == (3, 10)

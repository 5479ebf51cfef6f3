"""Error-compensating ASVD (refit): the Gauss–Newton output metric, sequential refitting vs one-shot whitening,
refusals, and apply_lowrank's default path."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from devicefit.compressor.lowrank import apply_lowrank
from devicefit.compressor.lowrank.refit import _Batches, gauss_newton_metrics, refit_asvd
from devicefit.compressor.techniques import LowRank
from devicefit.data import Dataset

torch.set_num_threads(1)


def _data(n: int = 512, d: int = 32, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, : d // 8] *= 8.0  # outlier channels
    return Dataset({"x": x + x @ (rng.normal(size=(d, d)).astype(np.float32) * 0.2)})


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(32, 96), nn.GELU(), nn.Linear(96, 48), nn.GELU(), nn.Linear(48, 8)).eval()
    with torch.no_grad():  # a few output directions matter far more than the rest
        net[4].weight.mul_(torch.linspace(0.05, 3.0, 48)[None, :])
    return net


def test_gauss_newton_metric_of_a_linear_tail_is_its_gram() -> None:
    # y = W2 h: J = W2 at every position, so E[JᵀJ] = W2ᵀ W2 (estimated with random probes)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 6), nn.Linear(6, 4)).eval()
    batches = _Batches(_data(256, 8), ["x"], 256, 64, None)
    got = gauss_newton_metrics(net, ["0"], batches, probes=32)["0"]
    w2 = net[1].weight.detach().double()
    want = w2.T @ w2
    assert got.shape == (6, 6)
    assert float((got - want).norm() / want.norm()) < 0.1
    assert all(p.requires_grad for p in net.parameters())  # parameters restored


def _output_err(net: nn.Module, ref: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(((net(x) - ref(x)) ** 2).mean())


def test_refit_beats_one_shot_whitening_at_equal_params() -> None:
    base = _mlp()
    calib, held = _data(seed=1), _data(seed=2)
    errs, params = {}, {}
    for method in ("whiten", "refit"):
        net = copy.deepcopy(base)
        plan = {n: LowRank(ratio=0.6, kind="asvd", asvd_method=method) for n in ("0", "2")}
        res = apply_lowrank(net, plan, data=calib, input_names=["x"])
        assert set(res.applied) == {"0", "2"} and not res.refused
        params[method] = sum(p.numel() for p in net.parameters())
        errs[method] = _output_err(net, base, torch.from_numpy(held.inputs["x"]))
    assert params["refit"] == params["whiten"]
    assert errs["refit"] < 0.8 * errs["whiten"], errs


def test_refit_refuses_no_gain_ranks_and_is_exact_on_a_low_rank_layer() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 12), nn.Linear(12, 4)).eval()
    base = copy.deepcopy(net)
    calib = _data(256, 16)
    # keeping (nearly) all the energy of a full-rank layer needs a rank that would not shrink it: refused
    done, refused = refit_asvd(net, base, {"0": LowRank(ratio=None, energy=0.999999, kind="asvd")}, calib, ["x"],
                               output_metric=None)
    assert not done and "would not reduce" in refused["0"]
    assert isinstance(net[0], nn.Linear)  # left as it was
    # a rank-deficient layer is reproduced exactly by its rank-r factors
    with torch.no_grad():
        net[0].weight.copy_(torch.randn(12, 3) @ torch.randn(3, 16))
    base = copy.deepcopy(net)
    done, refused = refit_asvd(net, base, {"0": LowRank(ratio=0.5, kind="asvd")}, calib, ["x"], output_metric=None)
    assert set(done) == {"0"} and not refused and done["0"].rank == 3  # type: ignore[operator]
    x = torch.from_numpy(_data(64, 16, seed=3).inputs["x"])
    assert _output_err(net, base, x) < 1e-8 * max(1.0, float((base(x) ** 2).mean().detach()))


class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(x))) * gate


class _Stack(nn.Module):
    """Repeated blocks in a ModuleList, each called on the previous block's output plus a shared argument."""

    def __init__(self, d: int = 16, n: int = 3, chained: bool = True) -> None:
        super().__init__()
        self.blocks, self.head, self.chained = nn.ModuleList(_Block(d) for _ in range(n)), nn.Linear(d, 4), chained

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(x[:, :1])
        h = x
        for blk in self.blocks:
            h = blk(h if self.chained else h * 1.0, gate)
        return self.head(h)


def test_block_chain_gives_the_same_refit_as_capturing_from_the_model_input() -> None:
    """The refit advances cached block inputs (one block forward per layer) where the forward chains its
    blocks; a model that does not (a new tensor between blocks) takes the per-layer capture path. Both must
    give the same factors."""
    from devicefit.compressor.lowrank.refit import _chain_blocks

    torch.manual_seed(0)
    chained = _Stack().eval()
    unchained = copy.deepcopy(chained)
    unchained.chained = False
    calib = _data(256, 16, seed=3)
    layers = [f"blocks.{i}.{f}" for i in range(3) for f in ("fc1", "fc2")]
    batches = _Batches(calib, ["x"], 256, 64, None)
    assert _chain_blocks(chained, layers, batches) == ["blocks.0", "blocks.1", "blocks.2"]
    assert _chain_blocks(unchained, layers, batches) == []
    assert _chain_blocks(chained, [*layers, "head"], batches) == []  # the head is in no block
    plan = dict.fromkeys(layers, LowRank(ratio=0.5, kind="asvd"))
    out = {}
    for label, net in (("chained", chained), ("unchained", unchained)):
        net = copy.deepcopy(net)
        done, refused = refit_asvd(net, copy.deepcopy(net), plan, calib, ["x"], token_mask=None)
        assert sorted(done) == sorted(layers) and not refused
        out[label] = net
    for name in layers:
        a, b = out["chained"].get_submodule(name), out["unchained"].get_submodule(name)
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.allclose(pa, pb, atol=1e-5, rtol=1e-4), name
    x = torch.from_numpy(calib.inputs["x"][:64])
    with torch.no_grad():
        assert float(torch.nn.functional.cosine_similarity(chained(x), out["chained"](x)).mean()) > 0.9

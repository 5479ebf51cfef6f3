"""Unstructured magnitude / Wanda and N:M pruning on small synthetic layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from devicefit.compressor.prune import magnitude_prune, nm_mask, nm_prune, wanda_prune
from devicefit.data import Dataset
from devicefit.errors import UserInputError

torch.set_num_threads(1)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


def _model() -> MLP:
    torch.manual_seed(0)
    return MLP().eval()


def _data(n: int = 64) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset({"x": rng.normal(size=(n, 4, 4, 4)).astype(np.float32)})


def test_magnitude_sparsity_is_exact_per_layer() -> None:
    m = _model()
    got = magnitude_prune(m, {"conv": 0.3, "fc1": 0.5, "fc2": 0.75})
    for name, ratio in {"conv": 0.3, "fc1": 0.5, "fc2": 0.75}.items():
        w = m.get_submodule(name).weight
        assert int((w == 0).sum()) == round(ratio * w.numel())
        assert got[name] == pytest.approx(round(ratio * w.numel()) / w.numel())
    # the survivors are the largest magnitudes
    ref = _model().fc1.weight.detach().abs()
    kept = m.fc1.weight != 0
    assert float(ref[kept].min()) >= float(ref[~kept].max())


def test_magnitude_global_ranks_all_layers_together() -> None:
    m = _model()
    magnitude_prune(m, {"fc1": 0.5, "fc2": 0.5}, scope="global")
    total = m.fc1.weight.numel() + m.fc2.weight.numel()
    zeros = int((m.fc1.weight == 0).sum() + (m.fc2.weight == 0).sum())
    assert zeros == round(0.5 * total)
    # global ranking does not give each layer exactly half
    assert abs(float((m.fc2.weight == 0).float().mean()) - 0.5) > 1e-3
    with pytest.raises(UserInputError):
        magnitude_prune(_model(), {"fc1": 0.5, "fc2": 0.3}, scope="global")


@pytest.mark.parametrize("importance", ["magnitude", "wanda"])
def test_two_four_has_exactly_two_nonzeros_per_group_of_four_along_input(importance: str) -> None:
    m = _model()
    nm_prune(m, ["conv", "fc1", "fc2"], n=2, m=4, importance=importance, data=_data(), input_names=["x"])
    for name in ("conv", "fc1", "fc2"):
        w = m.get_submodule(name).weight.detach()
        groups = w.reshape(w.shape[0], -1).reshape(w.shape[0], -1, 4)  # [out, in·kh·kw / 4, 4]
        assert torch.all((groups != 0).sum(-1) == 2), name
    # the axis is the input axis: along the output axis groups are not 2:4
    w = m.fc1.weight.detach().T.reshape(-1, 4)
    assert not torch.all((w != 0).sum(-1) == 2)


def test_nm_mask_keeps_largest_and_refuses_bad_lengths() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.2, 4.0, 3.0, 2.0, 1.0]])
    assert nm_mask(scores, 2, 4).tolist() == [[False, True, True, False, True, True, False, False]]
    layer = nn.Sequential(nn.Linear(6, 4))
    with pytest.raises(UserInputError, match="multiple of m=4"):
        nm_prune(layer, ["0"], n=2, m=4)


def test_wanda_prunes_per_output_row_and_beats_magnitude_on_skewed_inputs() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(512, 64)).astype(np.float32)
    x[:, :8] *= 20.0  # a few high-magnitude input channels (outlier features)
    data = Dataset({"x": x})
    base = nn.Sequential(nn.Linear(64, 32)).eval()
    ref = base(torch.from_numpy(x)).detach()
    errs = {}
    for method in ("magnitude", "wanda"):
        m = nn.Sequential(nn.Linear(64, 32)).eval()
        m.load_state_dict(base.state_dict())
        if method == "wanda":
            wanda_prune(m, {"0": 0.5}, data, ["x"])
            assert torch.all((m[0].weight == 0).sum(1) == 32)  # exactly half of every row
        else:
            magnitude_prune(m, {"0": 0.5})
        errs[method] = float(((m(torch.from_numpy(x)) - ref) ** 2).mean().detach())
    assert errs["wanda"] < 0.5 * errs["magnitude"], errs

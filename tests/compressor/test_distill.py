"""Distillation: the loss goes down, the best held-out checkpoint is what comes back, sparsity survives,
embeddings use the cosine loss, hidden-state MSE matches same-named layers (low-rank pairs included)."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from devicefit.compressor.distill import distill, output_loss
from devicefit.compressor.lowrank import apply_lowrank
from devicefit.compressor.prune import magnitude_prune
from devicefit.compressor.techniques import Distill, LowRank
from devicefit.data import Dataset

torch.set_num_threads(1)


class MLP(nn.Module):
    def __init__(self, normalize: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(20, 64)
        self.fc2 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 8)
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))
        return F.normalize(y, dim=1) if self.normalize else y


def _setup(normalize: bool = False) -> tuple[MLP, MLP, Dataset]:
    torch.manual_seed(0)
    teacher = MLP(normalize).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = np.random.default_rng(0).normal(size=(320, 20)).astype(np.float32)
    return teacher, student, Dataset({"x": x})


def _val_loss(student: nn.Module, teacher: nn.Module, data: Dataset, n_val: int, kind: str) -> float:
    x = torch.from_numpy(data.inputs["x"][len(data) - n_val :])
    with torch.no_grad():
        return float(output_loss(kind, student(x), teacher(x), 4.0))


def test_loss_decreases_and_best_checkpoint_is_returned() -> None:
    teacher, student, data = _setup()
    res = distill(student, teacher, data, Distill(steps=60, lr=3e-3, batch_size=32), ["x"], progress=False)
    assert res.loss == "kl" and res.steps == 60
    assert res.best_loss < 0.5 * res.initial_loss
    # the returned module is the best checkpoint: its held-out loss equals best_loss
    assert abs(_val_loss(res.module, teacher, data, 32, "kl") - res.best_loss) < 1e-4
    assert res.history[0]["step"] == 0 and any("val_loss" in h for h in res.history[1:])


def test_a_diverging_run_falls_back_to_the_best_state() -> None:
    teacher, student, data = _setup()
    start = copy.deepcopy(student)
    res = distill(student, teacher, data, Distill(steps=20, lr=5.0, batch_size=32), ["x"], progress=False, eval_every=5)
    assert res.best_loss <= res.initial_loss
    final_if_kept = _val_loss(res.module, teacher, data, 32, "kl")
    assert abs(final_if_kept - res.best_loss) < 1e-4
    if res.best_step == 0:  # nothing helped: exactly the input student comes back
        for a, b in zip(res.module.parameters(), start.parameters(), strict=True):
            assert torch.equal(a, b)


def test_embeddings_use_cosine_and_sparsity_is_kept() -> None:
    teacher, student, data = _setup(normalize=True)
    magnitude_prune(student, {"fc1": 0.5, "fc2": 0.5})
    zeros = (student.fc1.weight == 0).clone()
    res = distill(student, teacher, data, Distill(steps=30, lr=1e-3, batch_size=32), ["x"], progress=False)
    assert res.loss == "cosine"
    assert torch.all(res.module.fc1.weight[zeros] == 0)
    assert res.best_loss < res.initial_loss
    assert any("zeros" in n for n in res.notes)


def test_hidden_mse_matches_low_rank_layers_and_budget_in_seconds() -> None:
    teacher, _, data = _setup()
    student = copy.deepcopy(teacher)
    apply_lowrank(student, {"fc2": LowRank(ratio=0.6)})
    res = distill(student, teacher, data, Distill(steps=None, seconds=1.0, hidden_mse=1.0, batch_size=32), ["x"],
                  progress=False)
    assert "fc2" in res.hidden_layers and "fc1" in res.hidden_layers and "fc2.down" not in res.hidden_layers
    assert res.steps > 0 and res.seconds < 5.0
    assert res.best_loss <= res.initial_loss

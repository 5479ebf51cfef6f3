"""Calibration helpers: per-channel statistics skip padding tokens; trailing padding is trimmed."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from devicefit.compressor.prune.calib import collect_input_stats, trim_padding
from devicefit.data import Dataset


class Tok(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.fc = nn.Linear(4, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(input_ids)).mean(1)


def test_stats_ignore_padding_and_trim_keeps_real_tokens() -> None:
    torch.manual_seed(0)
    ids = np.array([[1, 2, 0, 0, 0], [3, 4, 5, 0, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    model = Tok().eval()
    st = collect_input_stats(model, ["fc"], Dataset({"input_ids": ids, "attention_mask": mask}),
                             ["input_ids", "attention_mask"])["fc"]
    assert st.count == 5  # 2 + 3 real tokens, padding left out
    real = model.emb.weight[torch.tensor([1, 2, 3, 4, 5])].detach().double()
    torch.testing.assert_close(st.sum_sq, (real**2).sum(0))
    t = trim_padding([torch.from_numpy(ids), torch.from_numpy(mask)], ["input_ids", "attention_mask"])
    assert t[0].shape == (2, 3) and torch.equal(t[0], torch.from_numpy(ids[:, :3]))
    same = trim_padding([torch.from_numpy(ids)], ["input_ids"])
    assert same[0].shape == (2, 5)

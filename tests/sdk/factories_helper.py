"""Factories for ``package.module:factory`` tests (imported by load_model, not collected by pytest)."""

from __future__ import annotations

import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def tiny_module() -> nn.Module:
    torch.manual_seed(0)
    return Tiny()


def tiny_pair() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return Tiny(), (torch.randn(2, 6),)


def broken() -> nn.Module:
    raise RuntimeError("factory exploded")


def not_a_module() -> int:
    return 3

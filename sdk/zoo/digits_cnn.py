"""``zoo:digits-cnn``: a small CNN trained (seeded, seconds, one thread) on scikit-learn's bundled digits.

Input ``x``: float32 ``[N, 1, 8, 8]`` in ``[0, 1]`` (pixel / 16). Output ``logits``: ``[N, 10]``.
Split: stratified, 25 % held out (``random_state=0``); ``eval`` = held-out samples with labels (metric
``accuracy``), ``calib`` = training samples (labels included, not required).

Layers (torch qualified names, the plan's layer names): ``conv1`` (1→32, 3x3), ``conv2`` (32→64, 3x3),
``fc1`` (1024→256), ``fc2`` (256→10); ``bn1``/``bn2`` follow the convolutions. Wide enough that
structured channel pruning changes host latency, small enough to train in a few seconds.

Trained weights are cached under :func:`devicefit.zoo.cache_dir` keyed by :data:`VERSION`; training is
deterministic (fixed seeds, one thread), so a cold and a warm load give the same model.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from devicefit.bundle import ModelBundle
from devicefit.data import Dataset

#: bump when the architecture, data split or training recipe changes (invalidates the cache)
VERSION = "digits-cnn-v1"
SEED = 0
EPOCHS = 20
BATCH = 64


class DigitsCNN(nn.Module):
    """conv(1→32)-BN-ReLU → conv(32→64)-BN-ReLU → maxpool 2 → fc(1024→256)-ReLU → fc(256→10)."""

    def __init__(self, c1: int = 32, c2: int = 64, hidden: int = 256, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c2)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(c2 * 4 * 4, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.relu(self.bn2(self.conv2(x))))
        x = self.relu(self.fc1(self.flatten(x)))
        return self.fc2(x)


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_eval, y_eval): float32 [N,1,8,8] in [0,1], int64 labels; stratified 75/25."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_tr, x_ev, y_tr, y_ev = train_test_split(x, y, test_size=0.25, stratify=y, random_state=SEED)
    return (
        np.ascontiguousarray(x_tr),
        np.ascontiguousarray(y_tr),
        np.ascontiguousarray(x_ev),
        np.ascontiguousarray(y_ev),
    )


def train(x: np.ndarray, y: np.ndarray) -> DigitsCNN:
    """Train deterministically on one thread (a few seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(SEED)
        model = DigitsCNN()
        opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=3e-3, total_steps=EPOCHS * ((len(x) + BATCH - 1) // BATCH)
        )
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        gen = torch.Generator().manual_seed(SEED)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        for _ in range(EPOCHS):
            perm = torch.randperm(len(xt), generator=gen)
            for i in range(0, len(xt), BATCH):
                idx = perm[i : i + BATCH]
                opt.zero_grad()
                loss = loss_fn(model(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
                sched.step()
        model.eval()
        return model
    finally:
        torch.set_num_threads(threads)


def _weights_path() -> Path:
    from devicefit.zoo import cache_dir

    return cache_dir() / f"{VERSION}.pt"


def load_trained(x_train: np.ndarray, y_train: np.ndarray) -> DigitsCNN:
    """The trained model: from the cache, or trained now and cached (atomic write)."""
    path = _weights_path()
    model = DigitsCNN()
    if path.is_file():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval()
        except Exception:  # corrupt or stale cache entry: retrain and overwrite
            pass
    model = train(x_train, y_train)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model


def build() -> ModelBundle:
    x_tr, y_tr, x_ev, y_ev = load_split()
    model = load_trained(x_tr, y_tr)
    return ModelBundle(
        name="zoo:digits-cnn",
        module=model,
        example_inputs=(torch.from_numpy(x_ev[:2].copy()),),
        input_names=["x"],
        output_names=["logits"],
        metric="accuracy",
        calib=Dataset({"x": x_tr}, y_tr, description="digits train split (75%)"),
        eval=Dataset({"x": x_ev}, y_ev, description="digits held-out split (25%, stratified)"),
        dynamic_axes={"x": {0: "batch"}},
        source="zoo:digits-cnn (trained on sklearn load_digits)",
    )

"""Root fixtures. Zoo bundles are session-scoped (loading MiniLM / EfficientNet takes seconds)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

if TYPE_CHECKING:
    from devicefit.bundle import ModelBundle


def _zoo(name: str) -> ModelBundle:
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    from devicefit import zoo

    return zoo.get(name)


@pytest.fixture(scope="session")
def digits_bundle() -> ModelBundle:
    """zoo:digits-cnn (trained once per machine, then cached under $DEVICEFIT_CACHE or ~/.cache/devicefit)."""
    return _zoo("digits-cnn")


@pytest.fixture(scope="session")
def minilm_bundle() -> ModelBundle:
    return _zoo("minilm-l6")


@pytest.fixture(scope="session")
def effnet_bundle() -> ModelBundle:
    return _zoo("efficientnet-lite0")


def _export(bundle: ModelBundle, tmp_path_factory: Any, name: str) -> Path:
    from devicefit.compressor.export import export_bundle

    return export_bundle(bundle, tmp_path_factory.mktemp(name) / f"{name}.onnx").path


@pytest.fixture(scope="session")
def digits_onnx(digits_bundle: ModelBundle, tmp_path_factory: Any) -> Path:
    """The verified fp32 ONNX of zoo:digits-cnn (exported once per session; do not modify it)."""
    return _export(digits_bundle, tmp_path_factory, "digits")


@pytest.fixture(scope="session")
def minilm_onnx(minilm_bundle: ModelBundle, tmp_path_factory: Any) -> Path:
    """The verified fp32 ONNX of zoo:minilm-l6 (exported once per session; do not modify it)."""
    return _export(minilm_bundle, tmp_path_factory, "minilm")


@pytest.fixture(scope="session")
def effnet_onnx(effnet_bundle: ModelBundle, tmp_path_factory: Any) -> Path:
    """The verified fp32 ONNX of zoo:efficientnet-lite0 (exported once per session; do not modify it)."""
    return _export(effnet_bundle, tmp_path_factory, "effnet")

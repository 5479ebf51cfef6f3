"""Where devicefit keeps its caches on the host (zoo weights, sensitivity tables, latency models, measurements).

One rule for every cache: ``$DEVICEFIT_CACHE`` when set, else ``$XDG_CACHE_HOME/devicefit``, else
``~/.cache/devicefit``. Pure ``os``: it lives in ``kernels`` so that every layer can import it (the kernels'
build cache, the compressor's sensitivity / latency / measurement caches, the sdk's zoo).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The devicefit cache folder (not created here; callers create the sub-folder they write)."""
    root = os.environ.get("DEVICEFIT_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "devicefit"


__all__ = ["cache_root"]

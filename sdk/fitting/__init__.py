"""``devicefit.fit`` and its parts: the thin shell around the engine
(:mod:`devicefit.compressor.search.session`).

* :mod:`.config` — :class:`FitConfig`, a fit's settings (the keywords of :func:`fit`, the study's spec);
* :mod:`.api` — :func:`fit`, :func:`start_study`, :func:`run_worker`, :class:`FitResult`;
* :mod:`.evaluator` — materialize plans, measure them on an agent (the device's or a spawned local one);
* :mod:`.interleave` — candidate blocks bracketed by reference blocks (the device's load cancels);
* :mod:`.report` — the written outputs (report.json / .html, plan, manifest);
* :mod:`.progress` — the phases on stderr (rich).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"FitConfig": "config", "FitResult": "api", "default_study_name": "api", "fit": "api", "run_worker": "api",
         "start_study": "api"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    """The names above, imported on first use (``FitConfig`` without the engine, which imports torch)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'devicefit.fitting' has no attribute {name!r}")
    return getattr(importlib.import_module(f"devicefit.fitting.{_LAZY[name]}"), name)

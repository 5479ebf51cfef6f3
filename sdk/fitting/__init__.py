"""``devicefit.fit`` and its parts: the thin shell around the engine
(:mod:`devicefit.compressor.search.session`).

* :mod:`.config` — :class:`FitConfig`, a fit's settings (the keywords of :func:`fit`, the study's spec);
* :mod:`.api` — :func:`fit`, :func:`start_study`, :func:`run_worker`, :class:`FitResult`;
* :mod:`.evaluator` — materialize plans, measure them on an agent (the device's or a spawned local one);
* :mod:`.interleave` — candidate blocks bracketed by reference blocks (the device's load cancels);
* :mod:`.report` — the written outputs (report.json / .html, plan, manifest);
* :mod:`.progress` — the phases on stderr (rich).
"""

from devicefit.fitting.api import FitResult, default_study_name, fit, run_worker, start_study
from devicefit.fitting.config import FitConfig

__all__ = ["FitConfig", "FitResult", "default_study_name", "fit", "run_worker", "start_study"]

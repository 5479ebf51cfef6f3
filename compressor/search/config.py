"""The fit engine's settings (their defaults: :mod:`devicefit.defaults`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from devicefit import defaults
from devicefit.compressor.search.candidate import Budget
from devicefit.compressor.search.space import SpaceConfig
from devicefit.compressor.techniques import Distill


def default_distill(steps: int | None = defaults.DISTILL_STEPS,
                    seconds: float | None = defaults.DISTILL_SECONDS) -> Distill | None:
    """The fit's distillation of its winner (None: no distillation)."""
    return Distill(steps=steps, seconds=seconds) if steps else None


@dataclass(frozen=True)
class SearchConfig:
    """Everything the engine (:class:`~devicefit.compressor.search.session.FitSession`) is told."""

    trials: int | None = defaults.TRIALS
    minutes: float | None = None
    max_measurements: int = defaults.MAX_MEASUREMENTS
    seed: int = 0
    #: the limits to meet (``None`` fields: no limit)
    budget: Budget = field(default_factory=Budget)
    space: SpaceConfig | None = None
    #: inputs per benchmark run and intra-op threads (the latency model learns per benchmark settings)
    batch_size: int = 1
    threads: int | None = None
    #: sensitivity: fixed sample count (None: as many as fit ``sens_seconds``)
    sens_samples: int | None = None
    sens_seconds: float = defaults.SENS_SECONDS
    #: measure each quant scheme on half the layers first (calibration probes, :mod:`.probes`)
    probe: bool = True
    #: predicted latency may exceed the budget by this fraction and still be measured (calibrated dtypes)
    latency_margin: float = 0.08
    #: ... and by this much while a dtype in the plan has never been measured on the device
    explore_margin: float = 0.6
    #: the latency budget is *out of reach* (the trials stop after the seeds) only when the fastest plan the
    #: calibrated model finds — or the fastest measured — misses it by more than this fraction (:mod:`.reach`)
    reach_margin: float = 0.15
    #: predicted drop may exceed the accuracy budget by this fraction (sensitivity is a rough sum)
    drop_margin: float = 0.25
    #: latencies within this fraction are a tie (then the lower drop wins): about the run-to-run noise
    tie: float = 0.05
    #: reuse earlier sessions' measurements of the same file on the same device and settings
    reuse: bool = True
    distill: Distill | None = field(default_factory=default_distill)
    #: before the choice, the fastest passing candidates (at most ``confirm_top``) are re-measured in
    #: ``confirm_rounds`` paired rounds with fp32 (:mod:`.confirm`; 0 rounds: the first measurements decide)
    confirm_top: int = defaults.CONFIRM_TOP
    confirm_rounds: int = defaults.CONFIRM_ROUNDS
    #: ... those first measured within this fraction of the fastest passing one (the others are no contenders)
    confirm_within: float = defaults.CONFIRM_WITHIN
    keep_float_counts: tuple[float, ...] = (0.05, 0.15)

    def scope(self) -> str:
        """The benchmark settings measurements are learned under ("" = ONNX at batch 1, the runner's threads; a
        TFLite fit's runner is another runtime: its efficiencies are learned apart)."""
        fmt = self.space.format if self.space is not None else "onnx"
        return "-".join(([fmt] if fmt != "onnx" else []) + ([f"batch{self.batch_size}"] if self.batch_size != 1 else [])
                        + ([f"threads{self.threads}"] if self.threads else []))

    def summary(self) -> dict[str, Any]:
        return {"trials": self.trials, "minutes": self.minutes, "max_measurements": self.max_measurements}

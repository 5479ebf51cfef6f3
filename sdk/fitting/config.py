"""``FitConfig``: the one definition of a fit's settings — ``devicefit.fit``'s keywords, the CLI's flags and
the spec stored on the Optuna study so that ``search-worker`` processes can rebuild the fit."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from devicefit import defaults
from devicefit.compressor.search.candidate import Budget
from devicefit.compressor.search.config import SearchConfig, default_distill
from devicefit.compressor.search.space import SpaceConfig
from devicefit.errors import UserInputError

#: the formats a fit can measure end to end -> the agent runner their files run on
RUNTIMES = {"onnx": "onnxruntime", "tflite": "litert"}
FORMATS = tuple(RUNTIMES)
#: budget field -> the profile's budget attribute it defaults to
_BUDGETS = {"latency_ms": ("max_latency_ms", "latency_ms"), "size_mb": ("max_size_mb", "storage_mb"),
            "memory_mb": ("max_memory_mb", "memory_mb"), "accuracy_drop": ("max_accuracy_drop", "accuracy_drop")}


def _positive_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int) and v >= 1


@dataclass(frozen=True)
class FitConfig:
    """A fit's settings, validated at construction; JSON-serializable (:meth:`to_dict` / :meth:`from_dict`).

    Budgets (``max_*``) not given default to the profile's; ``max_latency_ratio`` (e.g. 0.6 = at most 0.6 × the
    fp32 model's p50, measured on the device when the fit starts) replaces the latency one. ``trials`` (default 120) or ``minutes`` bound the
    search; ``max_measurements`` bounds how many candidates are compressed and measured. ``batch_size``:
    inputs per benchmark run (every latency is per run at this batch); ``threads``: intra-op threads of every
    benchmark (default: the runner's). ``store``: the measurement store file.
    """

    #: the model / data as a spec (zoo:NAME, a file, package.module:factory); None for an in-memory object
    model: str | None = None
    data: str | None = None
    profile: Any = "localhost"
    device: str | None = None
    #: further agents of the same kind: a device pool (:mod:`devicefit.fitting.pool`), one search-worker each
    pool: tuple[str, ...] = ()
    max_latency_ms: float | None = None
    #: latency budget as a fraction of the fp32 model's p50 measured on the device at the fit's start
    max_latency_ratio: float | None = None
    max_size_mb: float | None = None
    max_memory_mb: float | None = None
    max_accuracy_drop: float | None = None
    trials: int | None = None
    minutes: float | None = None
    format: str = "onnx"
    max_measurements: int = defaults.MAX_MEASUREMENTS
    space: SpaceConfig | None = None
    seed: int = 0
    sensitivity_samples: int | None = None
    runs: int = defaults.RUNS
    store: str | None = None
    batch_size: int = 1
    threads: int | None = None
    warmup: int = defaults.WARMUP
    sens_seconds: float = defaults.SENS_SECONDS
    distill_steps: int | None = defaults.DISTILL_STEPS
    distill_seconds: float | None = defaults.DISTILL_SECONDS
    #: measure each quant scheme on half the layers first (calibration probes)
    probe: bool = True

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise UserInputError(f"format={self.format!r} is not supported by fit", f"use one of {', '.join(FORMATS)}")
        if self.space is not None and self.space.format not in ("onnx", self.format):
            raise UserInputError(f"space.format={self.space.format!r} disagrees with format={self.format!r}",
                                 "give the format once: format=... (the space takes it)")
        if self.trials is not None and self.trials < 1:
            raise UserInputError(f"trials={self.trials} is not positive", "pass trials >= 1")
        if self.minutes is not None and self.minutes <= 0:
            raise UserInputError(f"minutes={self.minutes} is not positive", "pass minutes > 0")
        if not _positive_int(self.batch_size):
            raise UserInputError(f"batch_size={self.batch_size!r} is not a positive integer", "pass batch_size >= 1")
        if self.threads is not None and not _positive_int(self.threads):
            raise UserInputError(f"threads={self.threads!r} is not a positive integer",
                                 "pass threads >= 1, or None for the runner's default")
        if self.max_latency_ratio is not None and self.max_latency_ms is not None:
            raise UserInputError("both max_latency_ms and max_latency_ratio were given",
                                 "give one latency budget: milliseconds, or a fraction of the fp32 latency")
        if self.max_measurements < 0:
            raise UserInputError(f"max_measurements={self.max_measurements} is negative", "pass 0 or more")
        if self.pool and self.device is None:
            raise UserInputError("a device pool was given without the fit's own device",
                                 "give every board: --device URL1 --device URL2 (device=URL1, pool=(URL2, …))")
        if self.pool and (len(set(self.pool)) < len(self.pool) or self.device in self.pool):
            raise UserInputError(f"a board appears twice in the device pool: {[self.device, *self.pool]}",
                                 "give each board's URL once")
        if self.pool and self.model is None:
            raise UserInputError("a device pool needs a model spec its workers can load",
                                 "pass the model as zoo:NAME, a file or package.module:factory")

    @classmethod
    def create(cls, model: Any = None, data: Any = None, **options: Any) -> FitConfig:
        """From :func:`devicefit.fit`'s arguments: ``model`` / ``data`` objects are kept as specs only when
        they are strings or paths; ``None`` options take their defaults."""
        if options.get("max_measurements") is None:
            options.pop("max_measurements", None)
        if isinstance(options.get("store"), Path):
            options["store"] = str(options["store"])
        if options.get("pool") is not None:
            pool = options["pool"]
            options["pool"] = (pool,) if isinstance(pool, str) else tuple(pool)
        return cls(model=model if isinstance(model, str) else None,
                   data=str(data) if isinstance(data, (str, Path)) else None, **options)

    # ------------------------------------------------------------------------------ derived
    @property
    def effective_trials(self) -> int | None:
        return self.trials if self.trials is not None else (None if self.minutes else defaults.TRIALS)

    def profile_name(self) -> str:
        return str(self.profile) if isinstance(self.profile, (str, Path)) else str(getattr(self.profile, "id", ""))

    def load_profile(self) -> Any:
        from devicefit.device_profiles import load_profile

        return load_profile(self.profile)

    def budget(self, profile: Any) -> tuple[Budget, dict[str, str]]:
        """The budget (each limit given, else the profile's) and where each came from ("given" / "profile")."""
        pb = getattr(profile, "budget", None)
        values: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for name, (given, attr) in _BUDGETS.items():
            v = getattr(self, given)
            values[name] = v if v is not None else getattr(pb, attr, None)
            origin[name] = "given" if v is not None else "profile"
        if self.max_latency_ratio is not None:  # replaces the profile's latency budget
            values["latency_ms"], values["latency_ratio"] = None, self.max_latency_ratio
            origin["latency_ms"] = origin["latency_ratio"] = "given"
        return Budget(**values), origin

    def measurement_warnings(self, profile: Any) -> list[str]:
        """What the user must know about where latencies are measured: a board's profile with no ``device``
        is measured on this host (an agent spawned here), so its latency budget is checked on the wrong CPU."""
        from devicefit.device_profiles.loader import LOCALHOST

        pid = str(getattr(profile, "id", profile))
        if self.device is None and pid != LOCALHOST:
            return [f"profile {pid!r} is a board's, but no device was given: every latency is measured on this "
                    f"host, not on the board, so the budget is checked against the wrong CPU; pass "
                    f"--device grpc://BOARD:50051 (device=...) to measure on the board, or --profile localhost"]
        return []

    def search_config(self, budget: Budget) -> SearchConfig:
        """The engine's settings."""
        return SearchConfig(
            trials=self.effective_trials, minutes=self.minutes, max_measurements=self.max_measurements, seed=self.seed,
            budget=budget, space=replace(self.space or SpaceConfig(), format=self.format), batch_size=self.batch_size,
            threads=self.threads, sens_samples=self.sensitivity_samples, sens_seconds=self.sens_seconds,
            probe=self.probe, distill=default_distill(self.distill_steps, self.distill_seconds),
        )

    def with_(self, **changes: Any) -> FitConfig:
        return replace(self, **changes)

    # ------------------------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["profile"] = self.profile_name()
        d["space"] = self.space.to_dict() if self.space is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FitConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if kw.get("space"):
            kw["space"] = SpaceConfig.from_dict(kw["space"])
        kw["pool"] = tuple(kw.get("pool") or ())
        return cls(**kw)

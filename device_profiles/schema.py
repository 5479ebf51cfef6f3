"""Device profile schema: frozen dataclasses validated at construction (stdlib only).

Every error is a :class:`~devicefit.errors.ProfileError` whose message names the dotted field path
(``cpu.cores``), the value found and what would be valid.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from devicefit.errors import ProfileError

CATEGORIES = ("iot", "mobile", "automotive", "industrial", "edge-server", "host")
ARCHES = ("aarch64", "armv7l", "x86_64", "riscv64")
RUNTIMES = ("onnxruntime", "litert")
#: normalized ISA feature names (the probe maps /proc/cpuinfo flags onto these)
ISA_FEATURES = (
    # Arm
    "neon", "dotprod", "i8mm", "fp16", "bf16", "sve", "sve2",
    # x86
    "sse4_2", "avx", "fma", "f16c", "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
    "avx_vnni", "amx",
    # RISC-V
    "rvv",
)
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def _type_name(value: Any) -> str:
    return type(value).__name__


def _fail(path: str, value: Any, expected: str, fix: str | None = None) -> ProfileError:
    return ProfileError(
        f"profile field `{path}` = {value!r} ({_type_name(value)}) is invalid: expected {expected}",
        fix or f"set `{path}` to {expected}",
    )


def _check_str(path: str, value: Any, *, empty: bool = False) -> None:
    if not isinstance(value, str):
        raise _fail(path, value, "a string")
    if not empty and not value.strip():
        raise _fail(path, value, "a non-empty string")


def _check_int(path: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, value, f"an integer ≥ {minimum}")
    if value < minimum:
        raise _fail(path, value, f"an integer ≥ {minimum}")


def _as_float(path: str, value: Any, *, minimum: float, maximum: float | None = None, strict: bool = False) -> float:
    """Accept int or float (TOML writes ``4`` for 4.0); reject bool / str; check the range."""
    rng = f"a number > {minimum}" if strict else f"a number ≥ {minimum}"
    if maximum is not None:
        rng += f" and ≤ {maximum}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(path, value, rng)
    v = float(value)
    if not math.isfinite(v) or (v <= minimum if strict else v < minimum) or (maximum is not None and v > maximum):
        raise _fail(path, value, rng)
    return v


def _as_str_tuple(path: str, value: Any, *, allowed: tuple[str, ...] | None = None, nonempty: bool = False) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _fail(path, value, "a list of strings")
    out: list[str] = []
    for i, item in enumerate(value):
        _check_str(f"{path}[{i}]", item)
        if allowed is not None and item not in allowed:
            close = difflib.get_close_matches(item, allowed, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ProfileError(
                f"profile field `{path}[{i}]` = {item!r} is not a known value{hint}",
                f"use one of: {', '.join(allowed)}",
            )
        out.append(item)
    if nonempty and not out:
        raise _fail(path, value, "a non-empty list of strings")
    return tuple(out)


def _check_choice(path: str, value: Any, choices: tuple[str, ...]) -> None:
    _check_str(path, value)
    if value not in choices:
        raise ProfileError(
            f"profile field `{path}` = {value!r} is not valid", f"use one of: {', '.join(choices)}"
        )


@dataclass(frozen=True)
class CpuSpec:
    """The CPU the model runs on. ``max_ghz`` 0 means unknown (some VMs do not expose it)."""

    arch: str
    cores: int
    max_ghz: float
    isa: tuple[str, ...] = ()
    model: str = ""

    def __post_init__(self) -> None:
        _check_choice("cpu.arch", self.arch, ARCHES)
        _check_int("cpu.cores", self.cores, minimum=1)
        object.__setattr__(self, "max_ghz", _as_float("cpu.max_ghz", self.max_ghz, minimum=0.0, maximum=10.0))
        object.__setattr__(self, "isa", _as_str_tuple("cpu.isa", self.isa, allowed=ISA_FEATURES))
        _check_str("cpu.model", self.model, empty=True)


@dataclass(frozen=True)
class Budget:
    """Default budgets for a fit on this device (a fit's own limits override them)."""

    latency_ms: float
    memory_mb: float
    storage_mb: float
    accuracy_drop: float

    def __post_init__(self) -> None:
        for name in ("latency_ms", "memory_mb", "storage_mb"):
            object.__setattr__(self, name, _as_float(f"budget.{name}", getattr(self, name), minimum=0.0, strict=True))
        object.__setattr__(
            self, "accuracy_drop", _as_float("budget.accuracy_drop", self.accuracy_drop, minimum=0.0, maximum=1.0)
        )


@dataclass(frozen=True)
class DeviceProfile:
    """One board (or this machine, ``measured=True``). Throughput figures are whole-CPU peaks."""

    id: str
    name: str
    vendor: str
    soc: str
    category: str
    cpu: CpuSpec
    memory_mb: int
    storage_mb: int
    runtimes: tuple[str, ...]
    peak_gops_fp32: float
    peak_gops_int8: float
    mem_bandwidth_gbs: float
    budget: Budget
    sources: tuple[str, ...]
    notes: str = ""
    measured: bool = False
    probed_at: str | None = None
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_str("id", self.id)
        if not _ID_RE.match(self.id):
            raise _fail("id", self.id, "lowercase letters, digits and '-' (e.g. 'raspberry-pi-5')")
        for name in ("name", "vendor", "soc"):
            _check_str(name, getattr(self, name))
        _check_choice("category", self.category, CATEGORIES)
        if not isinstance(self.cpu, CpuSpec):
            raise _fail("cpu", self.cpu, "a CpuSpec / a [cpu] table")
        _check_int("memory_mb", self.memory_mb, minimum=1)
        _check_int("storage_mb", self.storage_mb, minimum=0)
        object.__setattr__(self, "runtimes", _as_str_tuple("runtimes", self.runtimes, allowed=RUNTIMES, nonempty=True))
        for name in ("peak_gops_fp32", "peak_gops_int8", "mem_bandwidth_gbs"):
            object.__setattr__(self, name, _as_float(name, getattr(self, name), minimum=0.0, strict=True))
        if not isinstance(self.budget, Budget):
            raise _fail("budget", self.budget, "a Budget / a [budget] table")
        if not isinstance(self.measured, bool):
            raise _fail("measured", self.measured, "true or false")
        object.__setattr__(self, "sources", _as_str_tuple("sources", self.sources, nonempty=not self.measured))
        _check_str("notes", self.notes, empty=True)
        if self.probed_at is not None:
            _check_str("probed_at", self.probed_at)
        aliases = _as_str_tuple("aliases", self.aliases)
        for i, alias in enumerate(aliases):
            if not _ID_RE.match(alias):
                raise _fail(f"aliases[{i}]", alias, "lowercase letters, digits and '-'")
        object.__setattr__(self, "aliases", aliases)

    # -- conversions -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML-ready dict (tuples become lists; ``probed_at`` omitted when None)."""
        d = dataclasses.asdict(self)

        def listify(x: Any) -> Any:
            if isinstance(x, dict):
                return {k: listify(v) for k, v in x.items() if v is not None}
            if isinstance(x, (list, tuple)):
                return [listify(v) for v in x]
            return x

        out: dict[str, Any] = listify(d)
        return out

    def to_toml(self) -> str:
        from devicefit.device_profiles.toml_io import dumps

        return dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceProfile:
        return profile_from_dict(data)

    def summary(self) -> dict[str, Any]:
        """The short row ``profiles list`` prints."""
        return {
            "id": self.id,
            "name": self.name,
            "vendor": self.vendor,
            "soc": self.soc,
            "category": self.category,
            "arch": self.cpu.arch,
            "cores": self.cpu.cores,
            "memory_mb": self.memory_mb,
            "peak_gops_fp32": self.peak_gops_fp32,
            "peak_gops_int8": self.peak_gops_int8,
            "mem_bandwidth_gbs": self.mem_bandwidth_gbs,
            "measured": self.measured,
        }


def _fields(cls: type) -> tuple[list[str], list[str]]:
    required: list[str] = []
    optional: list[str] = []
    for f in dataclasses.fields(cls):
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        (optional if has_default else required).append(f.name)
    return required, optional


def _table(cls: type, data: Any, prefix: str) -> dict[str, Any]:
    """Check a mapping's keys against ``cls``'s fields: missing and unknown keys are named with their path."""
    where = prefix.rstrip(".") or "profile"
    if not isinstance(data, Mapping):
        raise _fail(where, data, "a table (key = value pairs)")
    required, optional = _fields(cls)
    known = required + optional
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=2)
            hint = f" (did you mean `{prefix}{close[0]}`?)" if close else ""
            raise ProfileError(
                f"profile has an unknown field `{prefix}{key}`{hint}",
                f"valid fields of [{where}]: {', '.join(known)}",
            )
    for key in required:
        if key not in data:
            raise ProfileError(f"profile is missing the required field `{prefix}{key}`", f"add `{key} = …` to [{where}]")
    return dict(data)


def profile_from_dict(data: Mapping[str, Any]) -> DeviceProfile:
    """Build a validated :class:`DeviceProfile` from a parsed TOML / JSON mapping."""
    top = _table(DeviceProfile, data, "")
    top["cpu"] = CpuSpec(**_table(CpuSpec, top["cpu"], "cpu."))
    top["budget"] = Budget(**_table(Budget, top["budget"], "budget."))
    return DeviceProfile(**top)


__all__ = [
    "ARCHES",
    "CATEGORIES",
    "ISA_FEATURES",
    "RUNTIMES",
    "Budget",
    "CpuSpec",
    "DeviceProfile",
    "profile_from_dict",
]

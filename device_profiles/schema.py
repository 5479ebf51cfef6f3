"""Device profile schema: frozen dataclasses validated at construction (stdlib only).

Every error is a :class:`~devicefit.errors.ProfileError` whose message names the dotted field path
(``cpu.cores``), the value found and what would be valid. Validation checks every field before it raises:
when several are wrong, one :class:`ProfileProblems` lists them all (the user fixes the file in one pass).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from devicefit.errors import DevicefitError, ManyProblems, ProfileError

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


class ProfileProblems(ManyProblems, ProfileError):
    """Several problems found in one profile; ``problems`` holds one :class:`ProfileError` per field."""

    def __init__(self, problems: list[DevicefitError], where: str = "profile") -> None:
        super().__init__(problems, where)


class _Problems:
    """Collects :class:`ProfileError` s instead of stopping at the first one."""

    def __init__(self) -> None:
        self.items: list[ProfileError] = []

    def check(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ProfileError as exc:
            if isinstance(exc, ProfileProblems):
                self.items.extend(p for p in exc.problems if isinstance(p, ProfileError))
            else:
                self.items.append(exc)
            return None

    def raise_if_any(self) -> None:
        if len(self.items) == 1:
            raise self.items[0]
        if self.items:
            items: list[DevicefitError] = [*self.items]
            raise ProfileProblems(items)


#: field -> (check(path, value) -> normalized value, what a valid value is); used by ``__post_init__`` and by
#: :func:`profile_from_dict` (which checks every field present even when others are missing)
_Check = tuple[Callable[[str, Any], Any], str]


def _str_ok(path: str, value: Any, empty: bool = False) -> Any:
    _check_str(path, value, empty=empty)
    return value


def _int_ok(path: str, value: Any, minimum: int) -> Any:
    _check_int(path, value, minimum=minimum)
    return value


def _choice_ok(path: str, value: Any, choices: tuple[str, ...]) -> Any:
    _check_choice(path, value, choices)
    return value


def _id_ok(path: str, value: Any) -> Any:
    _check_str(path, value)
    if not _ID_RE.match(value):
        raise _fail(path, value, "lowercase letters, digits and '-' (e.g. 'raspberry-pi-5')")
    return value


def _aliases_ok(path: str, value: Any) -> Any:
    aliases = _as_str_tuple(path, value)
    for i, alias in enumerate(aliases):
        if not _ID_RE.match(alias):
            raise _fail(f"{path}[{i}]", alias, "lowercase letters, digits and '-'")
    return aliases


def _optional_str_ok(path: str, value: Any) -> Any:
    if value is not None:
        _check_str(path, value)
    return value


def _bool_ok(path: str, value: Any) -> Any:
    if not isinstance(value, bool):
        raise _fail(path, value, "true or false")
    return value


_CPU_CHECKS: dict[str, _Check] = {
    "arch": (lambda p, v: _choice_ok(p, v, ARCHES), f"one of: {', '.join(ARCHES)}"),
    "cores": (lambda p, v: _int_ok(p, v, 1), "an integer ≥ 1"),
    "max_ghz": (lambda p, v: _as_float(p, v, minimum=0.0, maximum=10.0), "a number ≥ 0.0 and ≤ 10.0"),
    "isa": (lambda p, v: _as_str_tuple(p, v, allowed=ISA_FEATURES), "a list of ISA feature names"),
    "model": (lambda p, v: _str_ok(p, v, True), "a string"),
}
_BUDGET_CHECKS: dict[str, _Check] = {
    **{name: ((lambda p, v: _as_float(p, v, minimum=0.0, strict=True)), "a number > 0.0")
       for name in ("latency_ms", "memory_mb", "storage_mb")},
    "accuracy_drop": (lambda p, v: _as_float(p, v, minimum=0.0, maximum=1.0), "a number ≥ 0.0 and ≤ 1.0"),
}
_PROFILE_CHECKS: dict[str, _Check] = {
    "id": (_id_ok, "lowercase letters, digits and '-' (e.g. 'raspberry-pi-5')"),
    **{name: (_str_ok, "a non-empty string") for name in ("name", "vendor", "soc")},
    "category": (lambda p, v: _choice_ok(p, v, CATEGORIES), f"one of: {', '.join(CATEGORIES)}"),
    "memory_mb": (lambda p, v: _int_ok(p, v, 1), "an integer ≥ 1"),
    "storage_mb": (lambda p, v: _int_ok(p, v, 0), "an integer ≥ 0"),
    "runtimes": (lambda p, v: _as_str_tuple(p, v, allowed=RUNTIMES, nonempty=True),
                 f"a non-empty list of: {', '.join(RUNTIMES)}"),
    **{name: ((lambda p, v: _as_float(p, v, minimum=0.0, strict=True)), "a number > 0.0")
       for name in ("peak_gops_fp32", "peak_gops_int8", "mem_bandwidth_gbs")},
    "measured": (_bool_ok, "true or false"),
    "notes": (lambda p, v: _str_ok(p, v, True), "a string"),
    "probed_at": (_optional_str_ok, "an ISO 8601 time string"),
    "aliases": (_aliases_ok, "a list of lowercase ids"),
}


def _validate(checks: Mapping[str, _Check], values: Mapping[str, Any], prefix: str, problems: _Problems) -> dict[str, Any]:
    """Run the check of every field present in ``values``; returns the normalized values that passed."""
    out: dict[str, Any] = {}
    for name, (check, _expected) in checks.items():
        if name in values:
            ok = problems.check(check, f"{prefix}{name}", values[name])
            if ok is not None or values[name] is None:
                out[name] = ok
    return out


def _apply(obj: Any, checks: Mapping[str, _Check], prefix: str, problems: _Problems) -> None:
    values = {name: getattr(obj, name) for name in checks}
    for name, value in _validate(checks, values, prefix, problems).items():
        object.__setattr__(obj, name, value)


@dataclass(frozen=True)
class CpuSpec:
    """The CPU the model runs on. ``max_ghz`` 0 means unknown (some VMs do not expose it)."""

    arch: str
    cores: int
    max_ghz: float
    isa: tuple[str, ...] = ()
    model: str = ""

    def __post_init__(self) -> None:
        problems = _Problems()
        _apply(self, _CPU_CHECKS, "cpu.", problems)
        problems.raise_if_any()


@dataclass(frozen=True)
class Budget:
    """Default budgets for a fit on this device (a fit's own limits override them)."""

    latency_ms: float
    memory_mb: float
    storage_mb: float
    accuracy_drop: float

    def __post_init__(self) -> None:
        problems = _Problems()
        _apply(self, _BUDGET_CHECKS, "budget.", problems)
        problems.raise_if_any()


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
        problems = _Problems()
        _apply(self, _PROFILE_CHECKS, "", problems)
        if not isinstance(self.cpu, CpuSpec):
            problems.items.append(_fail("cpu", self.cpu, "a CpuSpec / a [cpu] table"))
        if not isinstance(self.budget, Budget):
            problems.items.append(_fail("budget", self.budget, "a Budget / a [budget] table"))
        sources = problems.check(_as_str_tuple, "sources", self.sources, nonempty=self.measured is not True)
        if sources is not None:
            object.__setattr__(self, "sources", sources)
        problems.raise_if_any()

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


def _table(cls: type, data: Any, prefix: str, checks: Mapping[str, _Check], problems: _Problems) -> dict[str, Any] | None:
    """Check a mapping's keys against ``cls``'s fields and every present value against ``checks``.

    Missing and unknown keys and bad values are all collected in ``problems``, each named with its path.
    Returns the mapping when it is one (None otherwise).
    """
    where = prefix.rstrip(".") or "profile"
    if not isinstance(data, Mapping):
        problems.items.append(_fail(where, data, "a table (key = value pairs)"))
        return None
    required, optional = _fields(cls)
    known = required + optional
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=2)
            hint = f" (did you mean `{prefix}{close[0]}`?)" if close else ""
            problems.items.append(ProfileError(
                f"profile has an unknown field `{prefix}{key}`{hint}",
                f"valid fields of [{where}]: {', '.join(known)}",
            ))
    for key in required:
        if key not in data:
            expected = checks[key][1] if key in checks else f"a [{prefix}{key}] table"
            problems.items.append(ProfileError(
                f"profile is missing the required field `{prefix}{key}`",
                f"add `{key} = …` to [{where}]: {expected}",
            ))
    _validate(checks, data, prefix, problems)
    return dict(data)


def profile_from_dict(data: Mapping[str, Any]) -> DeviceProfile:
    """Build a validated :class:`DeviceProfile` from a parsed TOML / JSON mapping.

    Every field is checked before anything is raised: one problem raises a :class:`ProfileError`, several
    raise one :class:`ProfileProblems` naming each (field, value found, what would be valid).
    """
    problems = _Problems()
    top = _table(DeviceProfile, data, "", _PROFILE_CHECKS, problems)
    if top is None:
        problems.raise_if_any()
        raise AssertionError("unreachable")  # pragma: no cover
    cpu = _table(CpuSpec, top["cpu"], "cpu.", _CPU_CHECKS, problems) if "cpu" in top else None
    budget = _table(Budget, top["budget"], "budget.", _BUDGET_CHECKS, problems) if "budget" in top else None
    if "sources" in top:
        problems.check(_as_str_tuple, "sources", top["sources"], nonempty=top.get("measured") is not True)
    problems.raise_if_any()
    assert cpu is not None and budget is not None
    top["cpu"] = CpuSpec(**cpu)
    top["budget"] = Budget(**budget)
    return DeviceProfile(**top)


__all__ = [
    "ARCHES",
    "CATEGORIES",
    "ISA_FEATURES",
    "RUNTIMES",
    "Budget",
    "CpuSpec",
    "DeviceProfile",
    "ProfileProblems",
    "profile_from_dict",
]

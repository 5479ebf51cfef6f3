"""Command-line shortcuts → technique configs and uniform plans (shared by ``devicefit compress`` and ``fit``).

The names come from the technique registry (each class's ``cli_names``, see
:mod:`devicefit.compressor.techniques`); ``-`` and ``_`` are interchangeable (``int8-static``):

* ``--quant SCHEME[:k=v,...]``: ``int8_dynamic``, ``int8_static``, ``int8_weight_only``, ``int4`` (= int4
  weight-only RTN), ``int4_gptq``, ``int4_awq``, ``smoothquant``, ``float16``, ``float``; options are the
  config's fields, e.g. ``int8_static:calibration=mse``, ``int4_gptq:group_size=64``,
  ``smoothquant:alpha=0.75``.
* ``--prune``: ``structured:0.5`` | ``magnitude:0.5`` | ``wanda:0.5`` | ``N:M`` (e.g. ``2:4``); every number
  is the fraction removed.
* ``--lowrank``: ``svd:0.5`` | ``asvd:0.5`` | ``tucker2:0.5`` | ``spatial:0.5`` (fraction of the factorized
  layers' params removed) or ``svd:energy=0.9``.

Pure string parsing (no torch): unknown names raise :class:`UserInputError` listing the valid values.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import fields
from typing import Any

from devicefit.compressor.plan import Plan
from devicefit.compressor.techniques import Distill, Family, Technique, canonical_name, family_classes
from devicefit.errors import UserInputError

_FLAGS: dict[Family, str] = {"quant": "--quant", "prune": "--prune", "lowrank": "--lowrank"}
_NUMBER_NOTE: dict[Family, str] = {
    "prune": " (R = fraction removed, e.g. 0.5)",
    "lowrank": " (R = fraction of params removed) or KIND:energy=E",
    "quant": "",
}


def schemes(family: Family) -> dict[str, tuple[type[Technique], Mapping[str, Any]]]:
    """CLI name → (config class, fixed keyword arguments) of ``family``, read from the registry."""
    return {name: (cls, fixed) for cls in family_classes(family) for name, fixed in cls.shortcuts().items()}


class _QuantSchemes(Mapping[str, tuple[type[Technique], Mapping[str, Any]]]):
    """Live view of the quant CLI names (a technique registered later is listed too)."""

    def __getitem__(self, key: str) -> tuple[type[Technique], Mapping[str, Any]]:
        return schemes("quant")[key]

    def __iter__(self) -> Iterator[str]:
        return iter(schemes("quant"))

    def __len__(self) -> int:
        return len(schemes("quant"))


#: scheme name → (config class, fixed keyword arguments)
QUANT_SCHEMES: Mapping[str, tuple[type[Technique], Mapping[str, Any]]] = _QuantSchemes()


def usage(family: Family) -> str:
    """What the CLI accepts for ``family``, e.g. ``structured:R, magnitude:R, … or N:M (e.g. 2:4)``."""
    out: list[str] = []
    for cls in family_classes(family):
        out += [f"{n}:R" if cls.cli_number else n for n in cls.shortcuts()]
        if cls.cli_syntax:
            out.append(cls.cli_syntax)
    joined = ", ".join(out)
    return joined + _NUMBER_NOTE[family] if family != "quant" else joined


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _options(cls: type[Technique], text: str, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    valid = [f.name for f in fields(cls)]
    for item in filter(None, text.split(",")):
        key, sep, val = item.partition("=")
        if not sep or key.strip() not in valid:
            raise UserInputError(
                f"{where}: option {item!r} is not valid for {cls.__name__}",
                f"write key=value with key one of: {', '.join(valid) or '(none)'}",
            )
        out[key.strip()] = _value(val.strip())
    return out


def parse(family: Family, text: str) -> Technique:
    """``NAME[:ARG]`` of ``family`` → its config. ``ARG`` is a number (the class's ``cli_number`` field,
    required when it has one) or ``k=v,...`` options; some classes take their own syntax (``2:4``)."""
    flag, t = _FLAGS[family], text.strip()
    for cls in family_classes(family):
        special = cls.from_cli_text(t)
        if special is not None:
            return special
    name, _, arg = t.partition(":")
    table = schemes(family)
    entry = table.get(canonical_name(name))
    if entry is None:
        raise UserInputError(f"unknown {flag} {text!r}" if family != "quant" else f"unknown --quant scheme {name!r}",
                             f"use one of: {usage(family)}")
    cls, fixed = entry
    where = f"{flag} {text}"
    if cls.cli_number is not None and "=" not in arg:
        try:
            number = float(arg)
        except ValueError as exc:
            raise UserInputError(f"{flag} {text!r} has no number", f"use one of: {usage(family)}") from exc
        return cls.from_cli(fixed, {cls.cli_number: number})
    return cls.from_cli(fixed, _options(cls, arg, where))


def parse_quant(text: str) -> Technique:
    """``int8_static:calibration=mse`` (or ``int8-static:…``) → ``Int8Static(calibration="mse")``."""
    return parse("quant", text)


def parse_prune(text: str) -> Technique:
    """``structured:0.5`` | ``magnitude:0.5`` | ``wanda:0.5`` | ``2:4``."""
    return parse("prune", text)


def parse_lowrank(text: str) -> Technique:
    """``svd:0.5`` | ``asvd:0.5`` | ``tucker2:0.5`` | ``spatial:0.5`` | ``svd:energy=0.9``."""
    return parse("lowrank", text)


def shortcut_plan(
    *, quant: str | None = None, prune: str | None = None, lowrank: str | None = None, distill_steps: int | None = None
) -> Plan:
    """A uniform plan from the shortcut strings (``None`` = family not applied)."""
    return Plan.uniform(
        quant=parse_quant(quant) if quant else None,
        prune=parse_prune(prune) if prune else None,
        lowrank=parse_lowrank(lowrank) if lowrank else None,
        distill=Distill(steps=distill_steps) if distill_steps else None,
    )


__all__ = ["QUANT_SCHEMES", "parse", "parse_lowrank", "parse_prune", "parse_quant", "schemes", "shortcut_plan", "usage"]

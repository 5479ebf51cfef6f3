"""Command-line shortcuts → technique configs and uniform plans (shared by ``devicefit compress`` and ``fit``).

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

import re
from dataclasses import fields
from typing import Any

from devicefit.compressor.plan import Plan
from devicefit.compressor.techniques import (
    ChannelPrune,
    Distill,
    Float16,
    Int4WeightOnly,
    Int8Dynamic,
    Int8Static,
    Int8WeightOnly,
    KeepFloat,
    LowRank,
    MagnitudePrune,
    SemiStructuredPrune,
    SmoothQuant,
    Technique,
    WandaPrune,
)
from devicefit.errors import UserInputError

#: scheme name → (config class, fixed keyword arguments)
QUANT_SCHEMES: dict[str, tuple[type[Technique], dict[str, Any]]] = {
    "int8_dynamic": (Int8Dynamic, {}),
    "int8_static": (Int8Static, {}),
    "int8_weight_only": (Int8WeightOnly, {}),
    "int4": (Int4WeightOnly, {"algorithm": "rtn"}),
    "int4_gptq": (Int4WeightOnly, {"algorithm": "gptq"}),
    "int4_awq": (Int4WeightOnly, {"algorithm": "awq"}),
    "smoothquant": (SmoothQuant, {}),
    "float16": (Float16, {}),
    "float": (KeepFloat, {}),
}
PRUNE_METHODS = {"structured": ChannelPrune, "magnitude": MagnitudePrune, "wanda": WandaPrune}
LOWRANK_KINDS = ("svd", "asvd", "tucker2", "spatial")
_NM = re.compile(r"^(\d+):(\d+)$")


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


def parse_quant(text: str) -> Technique:
    """``int8_static:calibration=mse`` → ``Int8Static(calibration="mse")``."""
    name, _, opts = text.strip().partition(":")
    if name not in QUANT_SCHEMES:
        raise UserInputError(f"unknown --quant scheme {name!r}", f"use one of: {', '.join(QUANT_SCHEMES)}")
    cls, fixed = QUANT_SCHEMES[name]
    kwargs = {**_options(cls, opts, f"--quant {text}"), **fixed}
    return cls(**kwargs)


def parse_prune(text: str) -> Technique:
    """``structured:0.5`` | ``magnitude:0.5`` | ``wanda:0.5`` | ``2:4``."""
    t = text.strip()
    nm = _NM.match(t)
    if nm:
        return SemiStructuredPrune(n=int(nm.group(1)), m=int(nm.group(2)))
    method, _, ratio = t.partition(":")
    cls = PRUNE_METHODS.get(method)
    valid = "structured:R, magnitude:R, wanda:R (R = fraction removed, e.g. 0.5) or N:M (e.g. 2:4)"
    if cls is None:
        raise UserInputError(f"unknown --prune {text!r}", f"use one of: {valid}")
    try:
        r = float(ratio)
    except ValueError as exc:
        raise UserInputError(f"--prune {text!r} has no ratio", f"use one of: {valid}") from exc
    return cls(ratio=r)


def parse_lowrank(text: str) -> Technique:
    """``svd:0.5`` | ``asvd:0.5`` | ``tucker2:0.5`` | ``spatial:0.5`` | ``svd:energy=0.9``."""
    kind, _, arg = text.strip().partition(":")
    valid = f"{'|'.join(LOWRANK_KINDS)}:R (R = fraction of params removed) or KIND:energy=E"
    if kind not in LOWRANK_KINDS:
        raise UserInputError(f"unknown --lowrank {text!r}", f"use {valid}")
    try:
        if arg.startswith("energy="):
            return LowRank(kind=kind, ratio=None, energy=float(arg.removeprefix("energy=")))
        return LowRank(kind=kind, ratio=float(arg))
    except ValueError as exc:
        raise UserInputError(f"--lowrank {text!r} has no number", f"use {valid}") from exc


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


__all__ = ["QUANT_SCHEMES", "parse_lowrank", "parse_prune", "parse_quant", "shortcut_plan"]

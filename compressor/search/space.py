"""The search space: per-layer options built from the technique registry.

Which techniques exist, which layer kinds they act on, which export formats carry them and whether they
need calibration data is read from :data:`devicefit.compressor.techniques.TECHNIQUES` and each config's
declared capabilities (``layer_types``, ``formats``, ``needs_calibration``; recurrent layers get options for
the ONNX format only). ``SpaceConfig.layer_types`` narrows the kinds a method is offered on (by default what
the classes declare in ``search_layer_types``: ``int8_weight_only`` — int8 storage — on GRU / LSTM only). :class:`SpaceConfig` only says
which (family, method) pairs to search and on which ratio grid — by default what the technique classes
declare (``search_default``, ``search_ratios``, ``search_settings``); numeric ``ratio`` fields are varied
generically. A layer's options are every structural choice (none, each prune / low-rank setting) crossed
with every quant choice (float, each scheme). Channel pruning is offered only on layers the channel
dependencies (:mod:`devicefit.compressor.prune.deps`, shared with the pruner) find prunable on their own.

Unstructured and N:M pruning are left out by default: on dense CPU runtimes they change neither latency
nor the stored size (add them via ``SpaceConfig(families=...)``). Techniques that run devicefit's own kernels
(``needs_kernels``: 2:4 sparse int8, 2- / 3-bit weights) are offered only when ``SpaceConfig.kernels`` says the
device runs the kernel library (its ``GetInfo`` reports ``custom_kernels``): elsewhere their standard-op lowering
is no faster than int8 / int4, so the search leaves them out.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from devicefit.compressor.latency.roofline import LayerSpec
from devicefit.compressor.plan import LayerChoice, Plan
from devicefit.compressor.techniques import (
    FAMILIES,
    RECURRENT_KINDS,
    TECHNIQUES,
    Distill,
    Technique,
    family_classes,
)
from devicefit.errors import UserInputError

FLOAT = "float"


def _default_families() -> dict[str, tuple[str, ...]]:
    """Per family, the methods whose technique class is ``search_default`` (registry order)."""
    out: dict[str, tuple[str, ...]] = {}
    for fam in FAMILIES:
        methods = tuple(c.method for c in family_classes(fam) if c.search_default)
        if methods:
            out[fam] = methods
    return out


def _default_ratios() -> dict[str, tuple[float, ...]]:
    """Per family, the ``search_ratios`` grid of its first default technique that declares one."""
    out: dict[str, tuple[float, ...]] = {}
    for fam in FAMILIES:
        grids = [c.search_ratios for c in family_classes(fam) if c.search_default and c.search_ratios]
        if grids:
            out[fam] = grids[0]
    return out


def _default_layer_types() -> dict[str, tuple[str, ...]]:
    """Per method, the layer kinds the search offers it on where its class narrows them (``search_layer_types``)."""
    return {c.method: tuple(c.search_layer_types) for c in TECHNIQUES.values()
            if c.search_default and c.search_layer_types is not None}


def _default_settings() -> dict[str, dict[str, Any]]:
    """Per method, the fixed fields its technique class declares for the search (``search_settings``)."""
    return {c.method: dict(c.search_settings) for c in TECHNIQUES.values() if c.search_default and c.search_settings}


@dataclass(frozen=True)
class SpaceConfig:
    """What to search: methods per family, ratio grids, fixed settings per method, export format."""

    families: Mapping[str, tuple[str, ...]] = field(default_factory=_default_families)
    ratios: Mapping[str, tuple[float, ...]] = field(default_factory=_default_ratios)
    #: method -> fixed keyword arguments (e.g. {"lowrank": {"kind": "asvd"}})
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=_default_settings)
    format: str = "onnx"
    #: method -> the layer kinds it is offered on, narrower than its ``layer_types`` (default: the classes'
    #: ``search_layer_types``: ``int8_weight_only`` on GRU / LSTM only); ``{}`` offers every method on every
    #: kind it applies to
    layer_types: Mapping[str, tuple[str, ...]] = field(default_factory=_default_layer_types)
    #: the device runs devicefit's kernel library: offer the techniques that need it (``needs_kernels``), and their
    #: candidates use its ops (``ai.devicefit``); without it they are not offered
    kernels: bool = False

    def __post_init__(self) -> None:
        for fam, methods in self.families.items():
            if fam not in FAMILIES:
                raise UserInputError(f"SpaceConfig.families has unknown family {fam!r}", f"use {', '.join(FAMILIES)}")
            for m in methods:
                if (fam, m) not in TECHNIQUES:
                    valid = sorted(mm for f, mm in TECHNIQUES if f == fam)
                    raise UserInputError(f"SpaceConfig: unknown {fam} method {m!r}", f"use one of {', '.join(valid)}")

    def only(self, families: Collection[str]) -> SpaceConfig:
        """This space restricted to ``families`` (an ONNX-only model: ``("quant",)``)."""
        return SpaceConfig(families={k: v for k, v in self.families.items() if k in families},
                           ratios={k: v for k, v in self.ratios.items() if k in families},
                           settings=dict(self.settings), format=self.format, layer_types=dict(self.layer_types),
                           kernels=self.kernels)

    def to_dict(self) -> dict[str, Any]:
        return {"families": {k: list(v) for k, v in self.families.items()},
                "ratios": {k: list(v) for k, v in self.ratios.items()},
                "settings": {k: dict(v) for k, v in self.settings.items()}, "format": self.format,
                "layer_types": {k: list(v) for k, v in self.layer_types.items()}, "kernels": self.kernels}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SpaceConfig:
        return cls(
            families={k: tuple(v) for k, v in d.get("families", _default_families()).items()},
            ratios={k: tuple(float(x) for x in v) for k, v in d.get("ratios", _default_ratios()).items()},
            settings={k: dict(v) for k, v in d.get("settings", _default_settings()).items()},
            format=str(d.get("format", "onnx")),
            layer_types={k: tuple(v) for k, v in d.get("layer_types", _default_layer_types()).items()},
            kernels=bool(d.get("kernels", False)),
        )


@dataclass(frozen=True)
class Option:
    """One per-layer choice: at most one structural technique plus one quant technique."""

    label: str
    prune: Technique | None = None
    lowrank: Technique | None = None
    quant: Technique | None = None

    def choice(self) -> LayerChoice:
        return LayerChoice(prune=self.prune, lowrank=self.lowrank, quant=self.quant)

    def parts(self) -> tuple[str, ...]:
        """Labels of the single-technique options this one combines (sensitivity is measured per part)."""
        return tuple(p for p in self.label.split("+") if p != FLOAT)

    @property
    def structural(self) -> bool:
        return self.prune is not None or self.lowrank is not None


def technique_label(tech: Technique) -> str:
    ratio = getattr(tech, "ratio", None)
    return f"{tech.method}@{ratio:g}" if isinstance(ratio, float) else tech.method


def candidates(config: SpaceConfig, family: str, *, kind: str, has_calibration: bool) -> list[Technique]:
    """Instances of the configured techniques of ``family`` that apply to a ``kind`` layer."""
    out: list[Technique] = []
    for method in config.families.get(family, ()):
        cls = TECHNIQUES[(family, method)]  # type: ignore[index]
        fixed = {**cls.search_settings, **config.settings.get(method, {})}
        has_ratio = any(f.name == "ratio" for f in fields(cls))
        grid = config.ratios.get(family, ()) if has_ratio and "ratio" not in fixed else (None,)
        for ratio in grid:
            kwargs = dict(fixed)
            if ratio is not None:
                kwargs["ratio"] = float(ratio)
            tech = cls(**kwargs)
            if kind not in tech.layer_types or kind not in config.layer_types.get(method, tech.layer_types):
                continue
            if config.format not in tech.formats or (tech.needs_kernels and not config.kernels):
                continue
            if kind in RECURRENT_KINDS and config.format != "onnx":  # recurrent layers: ONNX GRU / LSTM only
                continue
            if tech.needs_calibration and not has_calibration:
                continue
            out.append(tech)
    return out


@dataclass
class SearchSpace:
    """Per layer, the ordered options (the first is always ``float``: the layer left alone)."""

    options: dict[str, list[Option]]

    @property
    def layers(self) -> list[str]:
        return list(self.options)

    def labels(self, layer: str) -> list[str]:
        return [o.label for o in self.options[layer]]

    def option(self, layer: str, label: str) -> Option:
        for o in self.options[layer]:
            if o.label == label:
                return o
        raise KeyError(f"{layer}: no option {label!r}")

    def has(self, layer: str, label: str) -> bool:
        return any(o.label == label for o in self.options.get(layer, ()))

    def atomic(self, layer: str) -> list[Option]:
        """Single-technique options of ``layer`` (what sensitivity measures)."""
        return [o for o in self.options[layer] if len(o.parts()) == 1]

    def choices(self, labels: Mapping[str, str]) -> dict[str, LayerChoice]:
        return {layer: self.option(layer, lab).choice() for layer, lab in labels.items()}

    def plan(self, labels: Mapping[str, str], *, distill: Distill | None = None) -> Plan:
        """The per-layer plan for {layer: option label}."""
        return Plan.per_layer(self.choices(labels), distill=distill)

    def uniform(self, label: str, *, fallback: str = FLOAT) -> dict[str, str]:
        """``label`` on every layer that offers it, ``fallback`` elsewhere."""
        return {layer: (label if self.has(layer, label) else fallback) for layer in self.options}

    def size(self) -> int:
        return sum(len(v) for v in self.options.values())

    def to_dict(self) -> dict[str, Any]:
        return {layer: [o.label for o in opts] for layer, opts in self.options.items()}


def build_space(
    specs: Sequence[LayerSpec],
    *,
    config: SpaceConfig | None = None,
    has_calibration: bool = True,
    prunable: Collection[str] | None = None,
) -> SearchSpace:
    """Options for each layer in ``specs`` from the registry and ``config``.

    ``prunable``: layers channel pruning may act on alone (from :func:`.deps.find_deps`); ``None`` = all.
    """
    config = config or SpaceConfig()
    options: dict[str, list[Option]] = {}
    for spec in specs:
        quants: list[Technique | None] = [None, *candidates(config, "quant", kind=spec.kind, has_calibration=has_calibration)]
        structs: list[Technique | None] = [None]
        for fam in ("prune", "lowrank"):
            for tech in candidates(config, fam, kind=spec.kind, has_calibration=has_calibration):
                if tech.removes_channels and prunable is not None and spec.name not in prunable:
                    continue
                structs.append(tech)
        opts: dict[str, Option] = {}
        for st in structs:
            for q in quants:
                parts = [technique_label(t) for t in (st, q) if t is not None] or [FLOAT]
                kw: dict[str, Technique | None] = {"quant": q}
                if st is not None:
                    kw[st.family] = st
                label = "+".join(parts)
                opts.setdefault(label, Option(label, **kw))  # type: ignore[arg-type]
        options[spec.name] = list(opts.values())
    return SearchSpace(options)

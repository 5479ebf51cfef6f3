"""``Plan``: which techniques apply to which layer. Serializes to YAML/JSON and back exactly.

A plan is an ordered list of rules. A rule matches torch module names (``fnmatch`` patterns such as
``encoder.layers.*.ffn.*``, or an exact name) and sets a technique per family (prune / lowrank / quant).
For every layer and family the **last** matching rule that sets that family wins, so a broad rule first
and exceptions after reads naturally::

    version: 1
    layers:
      - match: "*"
        quant: {method: int8_static, calibration: percentile}
      - match: classifier
        quant: {method: float}
    distill: {steps: 200, temperature: 4.0}

Passes run in the order prune → lowrank → distill → quant.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devicefit.compressor.techniques import FAMILIES, Distill, Family, Technique, technique_from_dict
from devicefit.errors import DevicefitError, ManyProblems, UserInputError, raise_all

PLAN_VERSION = 1


@dataclass(frozen=True)
class LayerRule:
    """Techniques for the layers whose name matches ``match`` (fnmatch pattern or exact name)."""

    match: str
    prune: Technique | None = None
    lowrank: Technique | None = None
    quant: Technique | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.match, str) or not self.match:
            raise UserInputError(f"LayerRule.match={self.match!r} is invalid", "give a layer name or fnmatch pattern")
        for fam in FAMILIES:
            tech = getattr(self, fam)
            if tech is not None and tech.family != fam:
                raise UserInputError(
                    f"LayerRule({self.match!r}).{fam} holds a {tech.family} technique ({tech.method})",
                    f"put {tech.method} under '{tech.family}:'",
                )

    def matches(self, layer: str) -> bool:
        return layer == self.match or fnmatch.fnmatchcase(layer, self.match)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"match": self.match}
        for fam in FAMILIES:
            tech = getattr(self, fam)
            if tech is not None:
                out[fam] = tech.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerRule:
        """A rule from its mapping; every problem of it is reported at once."""
        rule, problems = _rule_from_dict(data, "plan rule")
        raise_all(problems, "plan rule")
        assert rule is not None
        return rule


def _rule_from_dict(data: Any, where: str) -> tuple[LayerRule | None, list[DevicefitError]]:
    """(rule or None, every problem found in it), each problem prefixed with ``where``."""
    problems: list[DevicefitError] = []

    def note(exc: DevicefitError) -> None:
        for e in exc.problems if isinstance(exc, ManyProblems) else [exc]:
            problems.append(UserInputError(f"{where}: {e.problem}", e.fix))

    if not isinstance(data, dict) or "match" not in data:
        note(UserInputError(f"{data!r} has no 'match'", "each rule needs match: <layer pattern>"))
        return None, problems
    unknown = sorted(set(data) - {"match", *FAMILIES})
    if unknown:
        note(UserInputError(f"unknown key(s) {unknown}", f"valid keys: match, {', '.join(FAMILIES)}"))
    techs: dict[str, Technique] = {}
    for fam in FAMILIES:
        if data.get(fam) is None:
            continue
        try:
            techs[fam] = technique_from_dict(fam, data[fam])
        except DevicefitError as exc:
            note(exc)
        except (TypeError, ValueError, ArithmeticError) as exc:  # a field of the wrong type (ratio: "0.3")
            types = {str(k): type(v).__name__ for k, v in data[fam].items() if k != "method"}
            note(UserInputError(f"{fam} method {str(data[fam].get('method'))[:40]!r} has a field of the wrong type "
                                f"{types}: {str(exc)[:120]}", "write numbers as numbers and flags as true/false, "
                                "e.g. {method: structured, ratio: 0.3}"))
    if problems:
        return None, problems
    try:
        return LayerRule(match=data["match"], **techs), []  # type: ignore[arg-type]
    except DevicefitError as exc:
        note(exc)
        return None, problems


@dataclass(frozen=True)
class LayerChoice:
    """The resolved techniques for one layer (``None`` = family not applied)."""

    prune: Technique | None = None
    lowrank: Technique | None = None
    quant: Technique | None = None

    def is_empty(self) -> bool:
        return self.prune is None and self.lowrank is None and self.quant is None


@dataclass(frozen=True)
class Plan:
    """Ordered layer rules plus an optional global distillation step."""

    rules: tuple[LayerRule, ...] = ()
    distill: Distill | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def uniform(
        cls,
        *,
        prune: Technique | None = None,
        lowrank: Technique | None = None,
        quant: Technique | None = None,
        distill: Distill | None = None,
        match: str = "*",
    ) -> Plan:
        """Same techniques on every layer matching ``match``."""
        if prune is None and lowrank is None and quant is None:
            return cls(rules=(), distill=distill)
        return cls(rules=(LayerRule(match, prune=prune, lowrank=lowrank, quant=quant),), distill=distill)

    @classmethod
    def per_layer(cls, choices: dict[str, LayerChoice], *, distill: Distill | None = None) -> Plan:
        """One exact-name rule per layer (what the search produces)."""
        rules = tuple(
            LayerRule(name, prune=c.prune, lowrank=c.lowrank, quant=c.quant)
            for name, c in choices.items()
            if not c.is_empty()
        )
        return cls(rules=rules, distill=distill)

    def then(self, other: Plan) -> Plan:
        """This plan's rules followed by ``other``'s (``other`` wins on conflicts)."""
        return Plan(self.rules + other.rules, other.distill or self.distill)

    def finished(self, *, structure: bool = False) -> Plan:
        """Every rule's techniques :meth:`~devicefit.compressor.techniques.Technique.finished`: the plan as a fit
        compresses its chosen candidate at the end (the search's quick settings back at their thorough values).
        ``structure`` (the finish distills): a rule without a prune technique gets its quant technique's
        :meth:`~devicefit.compressor.techniques.Technique.finish_structure` (2:4 sparse int8: 2:4 pruning).
        Equal to ``self`` when nothing changes."""
        def fin(t: Technique | None) -> Technique | None:
            return t.finished() if t is not None else None

        def prune(r: LayerRule) -> Technique | None:
            if r.prune is None and structure and r.quant is not None:
                return r.quant.finish_structure()
            return fin(r.prune)

        return Plan(tuple(LayerRule(r.match, prune=prune(r), lowrank=fin(r.lowrank), quant=fin(r.quant))
                          for r in self.rules), self.distill)

    # ------------------------------------------------------------------ queries
    def choice_for(self, layer: str) -> LayerChoice:
        picked: dict[str, Technique | None] = {fam: None for fam in FAMILIES}
        for rule in self.rules:
            if rule.matches(layer):
                for fam in FAMILIES:
                    tech = getattr(rule, fam)
                    if tech is not None:
                        picked[fam] = tech
        return LayerChoice(**picked)  # type: ignore[arg-type]

    def resolve(self, layers: Iterable[str]) -> dict[str, LayerChoice]:
        """Layer name → choice, for the layers any rule touches."""
        out = {}
        for layer in layers:
            c = self.choice_for(layer)
            if not c.is_empty():
                out[layer] = c
        return out

    def layers_with(self, family: Family, layers: Iterable[str]) -> dict[str, Technique]:
        """Layer name → technique of ``family`` (layers without one are left out)."""
        out = {}
        for layer in layers:
            tech = getattr(self.choice_for(layer), family)
            if tech is not None:
                out[layer] = tech
        return out

    def uses(self, family: Family) -> bool:
        return any(getattr(r, family) is not None for r in self.rules)

    def needs_kernels(self) -> bool:
        """Some layer's technique runs devicefit's own kernels where the target has them (``needs_kernels``)."""
        return any(t is not None and t.needs_kernels for r in self.rules for t in (r.prune, r.lowrank, r.quant))

    # ------------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": PLAN_VERSION, "layers": [r.to_dict() for r in self.rules]}
        if self.distill is not None:
            out["distill"] = self.distill.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Plan:
        """A plan from its mapping (a parsed YAML / JSON file); every problem found is reported at once."""
        if not isinstance(data, dict):
            raise UserInputError(f"plan must be a mapping, got {type(data).__name__}", "see `devicefit compress --help`")
        problems: list[DevicefitError] = []
        version = data.get("version", PLAN_VERSION)
        if version != PLAN_VERSION:
            problems.append(UserInputError(f"plan version {version!r} is not supported", f"write version: {PLAN_VERSION}"))
        unknown = sorted(set(data) - {"version", "layers", "distill"})
        if unknown:
            problems.append(UserInputError(f"plan has unknown key(s) {unknown}", "valid keys: version, layers, distill"))
        layers = data.get("layers") or []
        if not isinstance(layers, list):
            problems.append(UserInputError("plan 'layers' must be a list of rules",
                                           "write layers: [{match: ..., quant: ...}]"))
            layers = []
        rules = []
        for i, item in enumerate(layers):
            label = f"layers[{i}]" + (f" (match {item['match']!r})" if isinstance(item, dict) and "match" in item else "")
            rule, found = _rule_from_dict(item, label)
            problems += found
            if rule is not None:
                rules.append(rule)
        distill = data.get("distill")
        distill_cfg = None
        if distill is not None:
            if not isinstance(distill, dict):
                problems.append(UserInputError(f"plan 'distill' must be a mapping, got {distill!r}",
                                               "write distill: {steps: 200}"))
            else:
                try:
                    distill_cfg = Distill(**distill)
                except (TypeError, ValueError, ArithmeticError) as exc:  # unknown field, or a field of the wrong type
                    problems.append(UserInputError(
                        f"plan 'distill' is invalid: {exc}",
                        "valid keys: steps, epochs, seconds, temperature, hidden_mse, lr, batch_size"))
                except DevicefitError as exc:
                    problems.append(UserInputError(f"plan 'distill': {exc.problem}", exc.fix))
        raise_all(problems, "plan")
        return cls(rules=tuple(rules), distill=distill_cfg)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_yaml(cls, text: str) -> Plan:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UserInputError(f"plan is not valid YAML: {exc}", "fix the YAML syntax") from exc
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        p = Path(path)
        if not p.is_file():
            raise UserInputError(f"plan file not found: {p}", "pass an existing .yaml or .json plan")
        text = p.read_text()
        return cls.from_json(text) if p.suffix == ".json" else cls.from_yaml(text)

    def save(self, path: str | Path) -> None:
        p = Path(path)
        p.write_text(self.to_json() if p.suffix == ".json" else self.to_yaml())

    def fingerprint(self) -> str:
        """Stable sha256 of the plan (keys measurement and sensitivity caches)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

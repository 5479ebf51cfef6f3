"""Hypothesis fuzzing of the plan YAML loader (issue #14): 2,000 structured plans with wrong types, unknown keys and
methods, and 2,000 text-mutated plan files; only devicefit's user-input error may escape ``Plan.from_yaml`` /
``Plan.load`` — never KeyError, TypeError, ValueError, …"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devicefit.compressor.plan import Plan
from devicefit.compressor.techniques import FAMILIES, TECHNIQUES, Distill
from devicefit.errors import UserInputError

pytestmark = pytest.mark.timeout(600)
FUZZ = settings(max_examples=2000, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
VALID = """version: 1
layers:
  - match: "encoder.*.fc1"
    prune: {method: structured, ratio: 0.3}
    lowrank: {method: lowrank, ratio: 0.5}
    quant: {method: int8-static, calibration: percentile}
  - match: "*"
    quant: {method: int4-weight-only, group_size: 32}
distill: {steps: 200, temperature: 4.0}
"""

_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=12))
_value = st.recursive(_scalar, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                      max_leaves=6)


def _technique(family: str) -> st.SearchStrategy[Any]:
    """Mostly a known method with 1-3 of its own fields set to anything; sometimes anything at all."""
    by_method = {m: sorted(f.name for f in fields(cls)) or ["x"] for (f, m), cls in TECHNIQUES.items() if f == family}
    known = st.sampled_from(sorted(by_method)).flatmap(
        lambda m: st.dictionaries(st.sampled_from(by_method[m]), _value, min_size=1, max_size=3).map(
            lambda kw: {**kw, "method": m.replace("_", "-")}))
    return st.one_of(known, known, known, _value)


_rule = st.one_of(
    st.fixed_dictionaries({"match": st.one_of(st.text(min_size=1, max_size=8), st.text(max_size=8), _value)},
                          optional={fam: _technique(fam) for fam in FAMILIES} | {"other": _value}),
    _value,
)
_plan = st.one_of(
    st.fixed_dictionaries({"layers": st.lists(_rule, min_size=1, max_size=3)}, optional={
        "version": st.one_of(st.just(1), _value),
        "distill": st.one_of(st.dictionaries(st.sampled_from([f.name for f in fields(Distill)]), _value, max_size=3),
                             _value),
        "extra": _value}),
    st.fixed_dictionaries({}, optional={"version": _value, "layers": _value, "distill": _value}),
    _value,
)


def _parse(text: str) -> Plan | None:
    try:
        return Plan.from_yaml(text)
    except UserInputError:
        return None


def test_the_unmutated_plan_loads() -> None:
    plan = Plan.from_yaml(VALID)
    assert len(plan.rules) == 2 and plan.distill is not None


@FUZZ
@given(data=_plan)
def test_fuzz_plan_structure(data: Any) -> None:
    plan = _parse(yaml.safe_dump(data))
    if plan is not None:  # what loads round-trips
        assert Plan.from_yaml(plan.to_yaml()) == plan


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 12), st.text(max_size=8)), min_size=1,
                      max_size=4))
def test_fuzz_plan_text(tmp_path: Path, edits: list[tuple[int, int, str]]) -> None:
    text = VALID
    for at, cut, new in edits:
        i = at % (len(text) + 1)
        text = text[:i] + new + text[i + cut:]
    p = tmp_path / "plan.yaml"
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        plan = Plan.load(p)
    except UserInputError as e:
        assert e.problem.strip(), "a refusal must name the problem"
        return
    assert Plan.from_yaml(plan.to_yaml()) == plan  # what loads round-trips

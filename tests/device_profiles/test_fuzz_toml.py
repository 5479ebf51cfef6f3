"""Hypothesis fuzzing of the device-profile TOML loader (issue #14): 2,000 structurally mutated profiles and 2,000
byte-mutated profile files; only devicefit's user-input error may escape ``load_profile_file`` — never KeyError,
TypeError, ValueError, …"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devicefit.device_profiles import loader, toml_io
from devicefit.errors import UserInputError

pytestmark = pytest.mark.timeout(600)
FUZZ = settings(max_examples=2000, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
BOARD = Path(loader.__file__).parent / "boards" / "imx8m-plus.toml"
VALID: dict[str, Any] = toml_io.loads(BOARD.read_text(encoding="utf-8"))
#: every field of the valid profile as a path: ("id",), ("cpu", "cores"), ...
PATHS = [(k,) for k in VALID] + [(k, f) for k, v in VALID.items() if isinstance(v, dict) for f in v]

_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=12))
_value = st.recursive(_scalar, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                      max_leaves=6)


def toml_value(v: Any) -> str:
    """``v`` as a TOML value (inline tables, arrays); None becomes an empty inline table (TOML has no null)."""
    if v is None:
        return "{}"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def to_toml(data: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in data.items())


def _load(tmp: Path, text: bytes) -> tuple[UserInputError | None, dict[str, Any], dict[str, Any]]:
    """Load ``text`` as a profile file: (the refusal, {}, {}) when refused with a UserInputError, else (None, the
    profile's dict, the dict after its own TOML round trip). Anything else escaping fails the test."""
    p = tmp / "board.toml"
    p.write_bytes(text)
    try:
        profile = loader.load_profile_file(p)
    except UserInputError as e:
        return e, {}, {}
    again = tmp / "again.toml"
    again.write_text(profile.to_toml(), encoding="utf-8")
    return None, profile.to_dict(), loader.load_profile_file(again).to_dict()


def test_the_unmutated_profile_loads(tmp_path: Path) -> None:
    p = tmp_path / "board.toml"
    p.write_text(to_toml(VALID))
    assert loader.load_profile_file(p).id == VALID["id"]


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(PATHS), st.one_of(st.just("<drop>"), _value), max_size=4),
       extra=st.dictionaries(st.text(max_size=8), _value, max_size=2))
def test_fuzz_profile_fields(tmp_path: Path, changes: dict[tuple[str, ...], Any], extra: dict[str, Any]) -> None:
    data = json.loads(json.dumps(VALID))
    for path, value in changes.items():
        where = data if len(path) == 1 else data.get(path[0])
        if not isinstance(where, dict):  # the table itself was replaced by another change
            continue
        if value == "<drop>":
            where.pop(path[-1], None)
        else:
            where[path[-1]] = value
    data.update(extra)
    refusal, loaded, again = _load(tmp_path, to_toml(data).encode("utf-8", "surrogatepass"))
    if not changes and not extra:
        assert refusal is None, refusal  # the valid profile itself must load
    if refusal is not None:
        assert refusal.problem.strip(), "a refusal must name the problem"
    else:  # a loaded profile has an id and survives its own TOML round trip
        assert isinstance(loaded["id"], str) and loaded["id"] and again == loaded


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 40), st.binary(max_size=12)), min_size=1,
                      max_size=4))
def test_fuzz_profile_bytes(tmp_path: Path, edits: list[tuple[int, int, bytes]]) -> None:
    buf = bytearray(BOARD.read_bytes())
    for at, cut, new in edits:
        i = at % (len(buf) + 1)
        buf[i: i + cut] = new
    refusal, loaded, again = _load(tmp_path, bytes(buf))
    if bytes(buf) == BOARD.read_bytes():
        assert refusal is None, refusal  # edits that restored the file must load
    if refusal is not None:
        assert refusal.problem.strip(), "a refusal must name the problem"
    else:
        assert isinstance(loaded["id"], str) and loaded["id"] and again == loaded

"""The wave gate and the wave plan: pure functions, checked exactly."""

from __future__ import annotations

import pytest

from devicefit.errors import UserInputError
from devicefit.fleet.gate import DeviceResult, Gate, evaluate
from devicefit.fleet.rollout import assign_waves, check_waves


def test_gate_passes_within_budget_and_ratio() -> None:
    v = evaluate(Gate(max_p90_ms=10, max_regression=1.10),
                 [DeviceResult("a", True, 9.0, 9.0), DeviceResult("b", True, 5.0, 4.8), DeviceResult("c", True, 2.0)])
    assert v.ok and v.reasons == [] and v.max_p90_ms == 9.0
    assert v.median_regression == pytest.approx((1.0 + 5.0 / 4.8) / 2)


def test_gate_fails_on_budget_regression_and_failures() -> None:
    rs = [DeviceResult("a", True, 12.0, 6.0), DeviceResult("b", True, 3.0, 2.0), DeviceResult("c", False)]
    v = evaluate(Gate(max_p90_ms=10, max_regression=1.10, max_failed_fraction=0.0), rs)
    assert not v.ok and len(v.reasons) == 3
    assert v.failed_fraction == pytest.approx(1 / 3) and v.median_regression == pytest.approx(1.75)
    assert evaluate(Gate(max_p90_ms=None, max_regression=None, max_failed_fraction=0.5), rs).ok


def test_gate_median_ignores_one_noisy_device() -> None:
    rs = [DeviceResult(str(i), True, 1.0, 1.0) for i in range(4)] + [DeviceResult("x", True, 5.0, 1.0)]
    assert evaluate(Gate(max_regression=1.10), rs).ok


@pytest.mark.parametrize("kw", [{"max_p90_ms": 0}, {"max_regression": 0.9}, {"max_failed_fraction": 1.5}])
def test_gate_validates(kw: dict[str, float]) -> None:
    with pytest.raises(UserInputError):
        Gate(**kw)


def test_waves_are_cumulative_and_nonempty() -> None:
    ids = [f"d{i:02d}" for i in range(20)]
    plan = assign_waves(ids, [0.05, 0.25, 1.0])
    assert [sum(w == i for w in plan.values()) for i in range(3)] == [1, 4, 15]
    assert plan["d00"] == 0 and plan["d19"] == 2
    assert [sum(w == i for w in assign_waves(["a", "b"], [0.05, 0.25, 1.0]).values()) for i in range(3)] == [1, 1, 0]
    for bad in ([], [0.5], [0.5, 0.3, 1.0], [0.0, 1.0], [0.5, 1.5]):
        with pytest.raises(UserInputError):
            check_waves(bad)

"""DeviceProfile schema: validation at construction, errors naming the dotted field, conversions."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from devicefit.device_profiles import Budget, CpuSpec, DeviceProfile, ProfileError, profile_from_dict


def board_dict() -> dict[str, Any]:
    return {
        "id": "test-board",
        "name": "Test Board",
        "vendor": "ACME",
        "soc": "ACME S1",
        "category": "iot",
        "memory_mb": 1024,
        "storage_mb": 8192,
        "runtimes": ["onnxruntime"],
        "peak_gops_fp32": 10,
        "peak_gops_int8": 40.5,
        "mem_bandwidth_gbs": 4.2,
        "sources": ["https://example.com/datasheet.pdf"],
        "cpu": {"arch": "aarch64", "cores": 4, "max_ghz": 1.5, "isa": ["neon", "dotprod"]},
        "budget": {"latency_ms": 50, "memory_mb": 256, "storage_mb": 64, "accuracy_drop": 0.01},
    }


def test_valid_profile_builds_and_coerces_ints_to_float() -> None:
    p = profile_from_dict(board_dict())
    assert p.id == "test-board"
    assert p.cpu == CpuSpec(arch="aarch64", cores=4, max_ghz=1.5, isa=("neon", "dotprod"))
    assert p.budget == Budget(latency_ms=50.0, memory_mb=256.0, storage_mb=64.0, accuracy_drop=0.01)
    assert isinstance(p.peak_gops_fp32, float) and p.peak_gops_fp32 == 10.0
    assert isinstance(p.budget.latency_ms, float)
    assert p.runtimes == ("onnxruntime",) and isinstance(p.sources, tuple)
    assert p.measured is False and p.probed_at is None


def test_profile_is_frozen() -> None:
    p = profile_from_dict(board_dict())
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.memory_mb = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("cpu", "cores"), "4", "cpu.cores"),
        (("cpu", "cores"), True, "cpu.cores"),
        (("cpu", "cores"), 0, "cpu.cores"),
        (("cpu", "max_ghz"), "fast", "cpu.max_ghz"),
        (("cpu", "isa"), "neon", "cpu.isa"),
        (("memory_mb",), 1024.5, "memory_mb"),
        (("peak_gops_fp32",), "10", "peak_gops_fp32"),
        (("peak_gops_int8",), -1.0, "peak_gops_int8"),
        (("budget", "latency_ms"), "50ms", "budget.latency_ms"),
        (("budget", "accuracy_drop"), 1.5, "budget.accuracy_drop"),
        (("runtimes",), [], "runtimes"),
        (("sources",), [], "sources"),
        (("name",), 3, "name"),
        (("id",), "Bad Id", "id"),
        (("cpu",), "arm", "cpu"),
    ],
)
def test_wrong_field_names_dotted_path_and_value(path: tuple[str, ...], value: Any, field: str) -> None:
    d = copy.deepcopy(board_dict())
    target = d
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ProfileError) as info:
        profile_from_dict(d)
    msg = str(info.value)
    assert f"`{field}" in msg, msg
    assert info.value.fix


def test_unknown_choice_lists_valid_values() -> None:
    d = board_dict()
    d["category"] = "phone"
    with pytest.raises(ProfileError, match="category") as info:
        profile_from_dict(d)
    assert "mobile" in str(info.value) and "automotive" in str(info.value)

    d = board_dict()
    d["cpu"]["isa"] = ["neon", "avx512vnni"]
    with pytest.raises(ProfileError, match=r"cpu\.isa\[1\]") as info:
        profile_from_dict(d)
    assert "avx512_vnni" in str(info.value)  # the close match is suggested

    d = board_dict()
    d["runtimes"] = ["tensorrt"]
    with pytest.raises(ProfileError, match=r"runtimes\[0\]"):
        profile_from_dict(d)


def test_missing_and_unknown_fields() -> None:
    d = board_dict()
    del d["budget"]["latency_ms"]
    with pytest.raises(ProfileError, match=r"missing the required field `budget\.latency_ms`"):
        profile_from_dict(d)
    d = board_dict()
    del d["mem_bandwidth_gbs"]
    with pytest.raises(ProfileError, match="`mem_bandwidth_gbs`"):
        profile_from_dict(d)
    d = board_dict()
    d["cpu"]["corez"] = 4
    with pytest.raises(ProfileError, match=r"unknown field `cpu\.corez`.*cpu\.cores"):
        profile_from_dict(d)


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ProfileError, match=r"cpu\.cores"):
        CpuSpec(arch="aarch64", cores="8", max_ghz=2.0)  # type: ignore[arg-type]
    with pytest.raises(ProfileError, match=r"cpu\.arch"):
        CpuSpec(arch="arm64", cores=8, max_ghz=2.0)


def test_measured_profile_may_omit_sources_boards_may_not() -> None:
    d = board_dict()
    d["sources"] = []
    d["measured"] = True
    d["probed_at"] = "2026-01-01T00:00:00+00:00"
    assert profile_from_dict(d).measured is True
    d["measured"] = "yes"
    with pytest.raises(ProfileError, match="`measured`"):
        profile_from_dict(d)


def test_to_dict_round_trip_and_summary() -> None:
    p = profile_from_dict(board_dict())
    d = p.to_dict()
    assert d["cpu"]["isa"] == ["neon", "dotprod"] and "probed_at" not in d
    assert DeviceProfile.from_dict(d) == p
    s = p.summary()
    assert s["id"] == "test-board" and s["cores"] == 4 and s["peak_gops_int8"] == 40.5

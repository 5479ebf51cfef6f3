"""Loader: built-in boards, search path and overrides, TOML round trip, errors, the localhost profile."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import pytest

from devicefit.device_profiles import (
    BUILTIN_DIR,
    ISA_FEATURES,
    DeviceProfile,
    ProfileError,
    ProfileWarning,
    list_profiles,
    load_profile,
    load_profile_file,
    probe_localhost,
    save_profile,
    search_path,
)

REQUIRED_BOARDS = {
    "raspberry-pi-4", "raspberry-pi-5", "raspberry-pi-zero-2w", "jetson-orin-nano", "imx8m-plus", "rk3588",
    "galaxy-s23", "pixel-8", "sa8155p", "intel-i7-1185g7e-edge",
}


@pytest.fixture(autouse=True)
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cfg = tmp_path / "config"
    monkeypatch.setenv("DEVICEFIT_CONFIG_DIR", str(cfg))
    monkeypatch.delenv("DEVICEFIT_PROFILE_PATH", raising=False)
    return cfg


def builtin_files() -> list[Path]:
    return sorted(BUILTIN_DIR.glob("*.toml"))


def test_all_builtin_boards_load_with_sane_figures() -> None:
    files = builtin_files()
    assert len(files) >= 10
    ids = set()
    for f in files:
        p = load_profile_file(f)
        assert f.stem == p.id, f"{f.name} holds id {p.id!r}"
        ids.add(p.id)
        assert not p.measured
        assert p.sources and any(s.startswith("https://") for s in p.sources), p.id
        assert "derived" in p.notes.lower(), f"{p.id}: say how the peaks were derived"
        assert set(p.cpu.isa) <= set(ISA_FEATURES)
        assert 1 <= p.cpu.cores <= 64 and 0.5 <= p.cpu.max_ghz <= 6.0
        assert 0 < p.peak_gops_fp32 <= p.peak_gops_int8 <= 8 * p.peak_gops_fp32
        # a CPU peak cannot exceed cores x GHz x 64 fp32 FLOP/cycle (2x512-bit FMA)
        assert p.peak_gops_fp32 <= p.cpu.cores * p.cpu.max_ghz * 64
        assert 1 <= p.mem_bandwidth_gbs <= 200
        assert p.budget.memory_mb < p.memory_mb and p.budget.storage_mb < p.storage_mb
        assert 0 < p.budget.accuracy_drop <= 0.05
        assert ("neon" in p.cpu.isa) == (p.cpu.arch == "aarch64")
    assert ids >= REQUIRED_BOARDS
    cats = {load_profile(i).category for i in ids}
    assert {"iot", "mobile", "automotive", "industrial", "edge-server"} <= cats


def test_known_datasheet_figures() -> None:
    pi5 = load_profile("raspberry-pi-5")
    assert (pi5.cpu.cores, pi5.cpu.max_ghz, pi5.soc) == (4, 2.4, "Broadcom BCM2712")
    assert pi5.peak_gops_fp32 == pytest.approx(4 * 2.4 * 16)
    zero = load_profile("raspberry-pi-zero-2w")
    assert zero.memory_mb == 512 and zero.cpu.max_ghz == 1.0
    edge = load_profile("intel-i7-1185g7e-edge")
    assert "avx512_vnni" in edge.cpu.isa and edge.cpu.arch == "x86_64"
    rk = load_profile("rk3588")
    assert rk.cpu.cores == 8 and "dotprod" in rk.cpu.isa


def test_toml_round_trip_of_every_board(tmp_path: Path) -> None:
    for f in builtin_files():
        p = load_profile_file(f)
        out = save_profile(p, tmp_path / f.name)
        again = load_profile_file(out)
        assert again == p
        assert again.to_toml() == p.to_toml()


def test_aliases_and_paths() -> None:
    assert load_profile("rpi5").id == "raspberry-pi-5"
    assert load_profile("Raspberry_Pi_4B").id == "raspberry-pi-4"
    assert load_profile(BUILTIN_DIR / "imx93.toml").id == "imx93"
    assert load_profile(str(BUILTIN_DIR / "imx93.toml")).id == "imx93"
    p = load_profile("pixel-8")
    assert load_profile(p) is p


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ProfileError) as info:
        load_profile("raspbery-pi-5")
    assert "raspberry-pi-5" in str(info.value)
    assert "devicefit profiles list" in (info.value.fix or "")
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile("missing/board.toml")


def _write_variant(path: Path, base: str, **changes: object) -> None:
    d = load_profile(base).to_dict()
    d.update(changes)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_profile(DeviceProfile.from_dict(d), path)


def test_user_dirs_override_builtins_by_id(tmp_path: Path, isolated_config: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    d1, d2 = tmp_path / "p1", tmp_path / "p2"
    _write_variant(d1 / "my-pi.toml", "raspberry-pi-5", memory_mb=4096)
    _write_variant(d2 / "pi5.toml", "raspberry-pi-5", memory_mb=2048)
    _write_variant(isolated_config / "profiles" / "raspberry-pi-5.toml", "raspberry-pi-5", memory_mb=16384)
    _write_variant(d2 / "custom.toml", "imx93", id="my-gateway", aliases=[])
    assert load_profile("raspberry-pi-5").memory_mb == 16384  # config dir beats built-in
    monkeypatch.setenv("DEVICEFIT_PROFILE_PATH", os.pathsep.join([str(d1), str(d2)]))
    assert search_path()[:2] == [d1, d2]
    assert load_profile("raspberry-pi-5").memory_mb == 4096  # first DEVICEFIT_PROFILE_PATH dir wins
    assert load_profile("my-gateway").soc == "NXP i.MX 93"
    ids = [p.id for p in list_profiles(include_localhost=False)]
    assert ids.count("raspberry-pi-5") == 1 and "my-gateway" in ids and "localhost" not in ids


def test_bad_user_file_is_named_and_skipped_in_listing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (BUILTIN_DIR / "raspberry-pi-5.toml").read_text()
    text = text.replace('id = "raspberry-pi-5"', 'id = "broken-board"').replace("cores = 4", 'cores = "four"')
    (tmp_path / "broken-board.toml").write_text(text)
    (tmp_path / "garbage.toml").write_text("this is = = not toml")
    monkeypatch.setenv("DEVICEFIT_PROFILE_PATH", str(tmp_path))
    with pytest.raises(ProfileError) as info:
        load_profile("broken-board")
    msg = str(info.value)
    assert "broken-board.toml" in msg and "`cpu.cores`" in msg and "'four'" in msg
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(tmp_path / "garbage.toml")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = [p.id for p in list_profiles(include_localhost=False)]
    assert "broken-board" not in ids and len(ids) >= 10
    assert {w.category for w in caught} == {ProfileWarning} and len(caught) == 2


def test_missing_field_in_file_is_named(tmp_path: Path) -> None:
    text = (BUILTIN_DIR / "imx93.toml").read_text()
    text = re.sub(r"(?m)^latency_ms = .*\n", "", text)
    f = tmp_path / "nolat.toml"
    f.write_text(text)
    with pytest.raises(ProfileError, match=r"nolat\.toml: .*`budget\.latency_ms`"):
        load_profile_file(f)


def test_localhost_uses_the_cache(isolated_config: Path) -> None:
    cached = load_profile("raspberry-pi-5").to_dict()
    cached.update(id="localhost", name="cached host", measured=True, probed_at="2026-01-01T00:00:00+00:00")
    save_profile(DeviceProfile.from_dict(cached), isolated_config / "profiles" / "localhost.toml")
    p = load_profile("localhost")
    assert p.name == "cached host" and p.measured
    assert list_profiles()[-1].name == "cached host"


def test_localhost_probe_measures_and_caches(isolated_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = probe_localhost(seconds_budget=0.6)
    assert "measuring this machine" in capsys.readouterr().err
    cache = isolated_config / "profiles" / "localhost.toml"
    assert cache.is_file()
    assert p.id == "localhost" and p.measured and p.category == "host" and p.probed_at
    assert p.cpu.cores >= 1 and p.memory_mb > 0 and "onnxruntime" in p.runtimes
    assert p.peak_gops_fp32 > 0.1 and p.peak_gops_int8 > 0.1 and p.mem_bandwidth_gbs > 0.1
    again = load_profile("localhost")  # now read from the cache, not re-measured
    assert again == p
    assert "measuring" not in capsys.readouterr().err

"""One cache root for every devicefit cache: DEVICEFIT_CACHE, then XDG_CACHE_HOME, then ~/.cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from devicefit import zoo
from devicefit.compressor.latency.store import default_path
from devicefit.kernels.paths import cache_root


def test_devicefit_cache_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DEVICEFIT_CACHE", str(tmp_path / "dc"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "dc"


def test_xdg_then_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DEVICEFIT_CACHE", raising=False)
    monkeypatch.delenv("DEVICEFIT_MEASUREMENTS_DB", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "devicefit"
    # every cache follows the same root: the measurement store and the zoo
    assert default_path() == tmp_path / "xdg" / "devicefit" / "measurements.db"
    assert zoo.cache_dir() == tmp_path / "xdg" / "devicefit" / "zoo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "devicefit"

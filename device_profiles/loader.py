"""Find, load and save device profiles.

Search path, highest precedence first (a profile id found earlier hides the same id found later):

1. directories in ``$DEVICEFIT_PROFILE_PATH`` (``os.pathsep``-separated, first wins),
2. the user's profile directory ``<config>/profiles`` where ``<config>`` is ``$DEVICEFIT_CONFIG_DIR``, else
   ``$XDG_CONFIG_HOME/devicefit``, else ``~/.config/devicefit``,
3. the built-in boards shipped in ``devicefit/device_profiles/boards/*.toml``.

``localhost`` is special: it is measured on this machine (``probe``) the first time it is asked for and
cached as ``<config>/profiles/localhost.toml``.
"""

from __future__ import annotations

import difflib
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from devicefit.device_profiles import toml_io
from devicefit.device_profiles.schema import DeviceProfile, ProfileProblems, profile_from_dict
from devicefit.errors import ProfileError

LOCALHOST = "localhost"
BUILTIN_DIR = Path(__file__).resolve().parent / "boards"


class ProfileWarning(UserWarning):
    """A profile file on the search path could not be read (it is skipped when listing)."""


def config_dir() -> Path:
    env = os.environ.get("DEVICEFIT_CONFIG_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "devicefit"


def user_profile_dir() -> Path:
    return config_dir() / "profiles"


def search_path() -> list[Path]:
    """Directories searched for ``*.toml`` profiles, highest precedence first."""
    dirs = [Path(p).expanduser() for p in os.environ.get("DEVICEFIT_PROFILE_PATH", "").split(os.pathsep) if p]
    dirs.append(user_profile_dir())
    dirs.append(BUILTIN_DIR)
    return dirs


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def load_profile_file(path: str | Path) -> DeviceProfile:
    """Parse and validate one TOML profile file; errors name the file and the field."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ProfileError(f"profile file {str(p)!r} does not exist", "check the path, or pass a profile name")
    try:
        data = toml_io.loads(p.read_text(encoding="utf-8"))
    except toml_io.TOMLDecodeError as exc:
        raise ProfileError(f"profile file {str(p)!r} is not valid TOML: {exc}", "fix the TOML syntax") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"profile file {str(p)!r} cannot be read: {exc}", "check the file") from exc
    try:
        return profile_from_dict(data)
    except ProfileProblems as exc:
        raise ProfileProblems(exc.problems, where=p.name) from None
    except ProfileError as exc:
        raise ProfileError(f"{p.name}: {exc.problem}", exc.fix) from None


@dataclass(frozen=True)
class _Entry:
    profile: DeviceProfile
    path: Path


def _index() -> tuple[dict[str, _Entry], dict[str, ProfileError]]:
    """id -> entry over the search path (first wins) and stem -> error for unreadable files."""
    found: dict[str, _Entry] = {}
    broken: dict[str, ProfileError] = {}
    for d in search_path():
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.toml")):
            try:
                prof = load_profile_file(f)
            except ProfileError as exc:
                broken.setdefault(_norm(f.stem), exc)
                continue
            found.setdefault(prof.id, _Entry(prof, f))
    return found, broken


def _lookup(found: dict[str, _Entry], name: str) -> _Entry | None:
    key = _norm(name)
    if key in found:
        return found[key]
    for entry in found.values():
        if key in entry.profile.aliases or key == _norm(entry.path.stem):
            return entry
    return None


def _looks_like_path(name: str) -> bool:
    return name.endswith(".toml") or os.sep in name or (os.altsep is not None and os.altsep in name)


def load_profile(name_or_path: str | Path | DeviceProfile) -> DeviceProfile:
    """A profile by id / alias (``"raspberry-pi-5"``), by file path (``"my-board.toml"``), or ``"localhost"``."""
    if isinstance(name_or_path, DeviceProfile):
        return name_or_path
    if isinstance(name_or_path, Path) or _looks_like_path(str(name_or_path)):
        return load_profile_file(name_or_path)
    name = str(name_or_path)
    found, broken = _index()
    entry = _lookup(found, name)
    if entry is not None:
        return entry.profile
    if _norm(name) in broken:
        raise broken[_norm(name)]
    if _norm(name) == LOCALHOST:
        return probe_localhost()
    names = sorted({*found, LOCALHOST, *(a for e in found.values() for a in e.profile.aliases)})
    close = difflib.get_close_matches(_norm(name), names, n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ProfileError(
        f"unknown device profile {name!r}{hint}",
        "run `devicefit profiles list` for the known profiles, or pass a path to a .toml profile",
    )


def list_profiles(*, include_localhost: bool = True) -> list[DeviceProfile]:
    """Every profile on the search path (user files override built-ins by id), plus ``localhost``.

    ``localhost`` is probed (a few seconds) and cached if it is not cached yet. Unreadable files are
    skipped with a :class:`ProfileWarning`.
    """
    found, broken = _index()
    for stem, err in broken.items():
        warnings.warn(f"skipping profile {stem!r}: {err}", ProfileWarning, stacklevel=2)
    profiles = {pid: e.profile for pid, e in found.items()}
    if include_localhost and LOCALHOST not in profiles:
        profiles[LOCALHOST] = probe_localhost()
    if not include_localhost:
        profiles.pop(LOCALHOST, None)
    boards = sorted((p for p in profiles.values() if p.id != LOCALHOST), key=lambda p: (p.category, p.id))
    return boards + ([profiles[LOCALHOST]] if LOCALHOST in profiles else [])


def profile_path(name: str) -> Path | None:
    """The file a named profile comes from (None when unknown)."""
    entry = _lookup(_index()[0], name)
    return entry.path if entry else None


def save_profile(profile: DeviceProfile, path: str | Path) -> Path:
    """Write ``profile`` as TOML (atomic replace); returns the path."""
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(profile.to_toml(), encoding="utf-8")
    os.replace(tmp, p)
    return p


def probe_localhost(*, refresh: bool = False, seconds_budget: float = 3.0) -> DeviceProfile:
    """The measured profile of this machine, cached in ``<config>/profiles/localhost.toml``."""
    cache = user_profile_dir() / f"{LOCALHOST}.toml"
    if cache.is_file() and not refresh:
        return load_profile_file(cache)
    from devicefit.device_profiles.probe import probe_profile  # lazy: needs the agent extra

    sys.stderr.write("devicefit: measuring this machine for the 'localhost' profile (a few seconds)…\n")
    prof = probe_profile(seconds_budget=seconds_budget)
    try:
        save_profile(prof, cache)
        sys.stderr.write(f"devicefit: cached the localhost profile in {cache}\n")
    except OSError as exc:  # read-only home: still usable, just not cached
        warnings.warn(f"could not cache the localhost profile in {cache}: {exc}", ProfileWarning, stacklevel=2)
    return prof

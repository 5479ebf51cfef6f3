"""Device profiles: one TOML file per board, a frozen-dataclass schema, and a loader.

``load_profile("raspberry-pi-5")``, ``load_profile("my-board.toml")``, ``load_profile("localhost")``
(measured on this machine and cached), ``list_profiles()``. Standard library only (``tomllib``); probing
``localhost`` needs the agent extra (onnxruntime), never torch.
"""

from __future__ import annotations

from devicefit.device_profiles.loader import (
    BUILTIN_DIR,
    LOCALHOST,
    ProfileWarning,
    config_dir,
    list_profiles,
    load_profile,
    load_profile_file,
    probe_localhost,
    profile_path,
    save_profile,
    search_path,
    user_profile_dir,
)
from devicefit.device_profiles.schema import (
    ARCHES,
    CATEGORIES,
    ISA_FEATURES,
    RUNTIMES,
    Budget,
    CpuSpec,
    DeviceProfile,
    ProfileProblems,
    profile_from_dict,
)
from devicefit.errors import ProfileError

__all__ = [
    "ARCHES",
    "BUILTIN_DIR",
    "CATEGORIES",
    "ISA_FEATURES",
    "LOCALHOST",
    "RUNTIMES",
    "Budget",
    "CpuSpec",
    "DeviceProfile",
    "ProfileError",
    "ProfileProblems",
    "ProfileWarning",
    "config_dir",
    "list_profiles",
    "load_profile",
    "load_profile_file",
    "probe_localhost",
    "profile_from_dict",
    "profile_path",
    "save_profile",
    "search_path",
    "user_profile_dir",
]

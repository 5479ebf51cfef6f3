"""devicefit — fit trained models to real edge devices.

The public API is imported lazily: ``import devicefit`` (and ``import devicefit.agent``) never imports
torch; ``devicefit.fit`` / ``devicefit.compress`` load the host side on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> "module:attribute" (resolved on first access)
_LAZY = {
    "fit": "devicefit.fitting.api:fit",
    "FitResult": "devicefit.fitting.api:FitResult",
    "FitConfig": "devicefit.fitting.config:FitConfig",
    "start_study": "devicefit.fitting.api:start_study",
    "run_worker": "devicefit.fitting.api:run_worker",
    "compress": "devicefit.compress:compress",
    "CompressResult": "devicefit.compress:CompressResult",
    "connect": "devicefit.device:connect",
    "Device": "devicefit.device:Device",
    "deploy": "devicefit.device:deploy",
    "Fleet": "devicefit.fleet:Fleet",
    "Gate": "devicefit.fleet:Gate",
    "load_model": "devicefit.models:load_model",
    "ModelBundle": "devicefit.bundle:ModelBundle",
    "Dataset": "devicefit.data:Dataset",
    "Plan": "devicefit.compressor.plan:Plan",
    "load_profile": "devicefit.device_profiles:load_profile",
    "DevicefitError": "devicefit.errors:DevicefitError",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'devicefit' has no attribute {name!r}")
    mod, attr = target.split(":")
    value = getattr(importlib.import_module(mod), attr)
    globals()[name] = value
    return value

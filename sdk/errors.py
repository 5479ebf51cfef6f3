"""Errors a user can act on. The CLI prints them as one line (problem + fix) and exits 2."""

from __future__ import annotations

from devicefit.protos.errors import DeviceError, DevicefitError, UserInputError

__all__ = [
    "BudgetNotMetError", "DeviceError", "DevicefitError", "ExportError", "ModelLoadError", "ProfileError",
    "UserInputError",
]


class ProfileError(UserInputError):
    """A device profile is missing, malformed or has a wrong-typed field."""


class ModelLoadError(UserInputError):
    """A model could not be loaded (missing file, corrupt ONNX, unknown zoo name, bad factory)."""


class ExportError(DevicefitError):
    """Export failed, or the exported model does not match the source model (parity broken)."""


class BudgetNotMetError(DevicefitError):
    """No candidate met the budget (the report is still written)."""

    exit_code = 3

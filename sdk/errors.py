"""Errors a user can act on. The CLI prints them as one line (problem + fix) and exits 2."""

from __future__ import annotations


class DevicefitError(Exception):
    """Base of every error devicefit raises on purpose.

    ``problem`` says what is wrong (naming the field / value / path); ``fix`` says what to do about it.
    """

    exit_code: int = 2

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} — {fix}" if fix else problem)


class UserInputError(DevicefitError):
    """Bad input: missing file, corrupt model, unknown name, invalid value."""


class ProfileError(UserInputError):
    """A device profile is missing, malformed or has a wrong-typed field."""


class ModelLoadError(UserInputError):
    """A model could not be loaded (missing file, corrupt ONNX, unknown zoo name, bad factory)."""


class ExportError(DevicefitError):
    """Export failed, or the exported model does not match the source model (parity broken)."""


class DeviceError(DevicefitError):
    """The device agent is unreachable, refused a request, or reported a failure."""


class BudgetNotMetError(DevicefitError):
    """No candidate met the budget (the report is still written)."""

    exit_code = 3

"""Errors a user can act on. The CLI prints them as one line (problem + fix) and exits 2."""

from __future__ import annotations

from devicefit.protos.errors import DeviceError, DevicefitError, UserInputError

__all__ = [
    "BudgetNotMetError", "DeviceError", "DevicefitError", "ExportError", "ManyProblems", "ModelLoadError",
    "ProfileError", "UserInputError", "raise_all",
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


# Input is checked as a whole: where a file or call has several problems, raise_all reports every one at once
# (ManyProblems), so the user fixes them in one pass.
class ManyProblems(UserInputError):
    """Several problems found in one input; ``problems`` holds each (its own problem and fix)."""

    def __init__(self, problems: list[DevicefitError], where: str = "input") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {i}. {e.problem} — {e.fix}" if e.fix else f"  {i}. {e.problem}"
                          for i, e in enumerate(self.problems, 1))
        super().__init__(f"{where} has {len(self.problems)} problems:\n{lines}", "fix each problem listed above")


def raise_all(problems: list[DevicefitError], where: str = "input") -> None:
    """Raise nothing when ``problems`` is empty, the problem itself when there is one, else :class:`ManyProblems`
    listing them all (nested ``ManyProblems`` are flattened)."""
    flat: list[DevicefitError] = []
    for e in problems:
        flat.extend(e.problems if isinstance(e, ManyProblems) else [e])
    if len(flat) == 1:
        raise flat[0]
    if flat:
        raise ManyProblems(flat, where)

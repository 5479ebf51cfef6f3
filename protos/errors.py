"""Errors of the wire contract: the base error classes (problem + fix, as carried in devicefit.v1.Status) and
the machine-readable codes an agent answers with.

``devicefit.errors`` re-exports the base classes (the SDK adds its host-only ones there).
"""

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


class DeviceError(DevicefitError):
    """The device agent is unreachable, refused a request, or reported a failure."""


# codes carried in devicefit.v1.Status.code
SCHEMA_MISMATCH = "SCHEMA_MISMATCH"
INVALID_ARGUMENT = "INVALID_ARGUMENT"
NOT_FOUND = "NOT_FOUND"
FAILED_PRECONDITION = "FAILED_PRECONDITION"
OFFSET_MISMATCH = "OFFSET_MISMATCH"
CHUNK_CORRUPT = "CHUNK_CORRUPT"
CHECKSUM_MISMATCH = "CHECKSUM_MISMATCH"
SIGNATURE_INVALID = "SIGNATURE_INVALID"
INCOMPLETE = "INCOMPLETE"
BUSY = "BUSY"
LOAD_FAILED = "LOAD_FAILED"
RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
CANCELLED = "CANCELLED"
REPLAYED = "REPLAYED"
UNAUTHENTICATED = "UNAUTHENTICATED"
INTERNAL = "INTERNAL"


class AgentError(DeviceError):
    """A request the agent refused or could not complete; ``code`` is one of the constants above."""

    def __init__(self, code: str, problem: str, fix: str | None = None) -> None:
        self.code = code
        super().__init__(problem, fix)

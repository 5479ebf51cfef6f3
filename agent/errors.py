"""Errors the agent reports back to the host: a machine-readable code plus problem and fix."""

from __future__ import annotations

from devicefit.errors import DeviceError

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
INTERNAL = "INTERNAL"


class AgentError(DeviceError):
    """A request the agent refused or could not complete; ``code`` is one of the constants above."""

    def __init__(self, code: str, problem: str, fix: str | None = None) -> None:
        self.code = code
        super().__init__(problem, fix)

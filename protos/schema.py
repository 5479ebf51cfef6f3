"""Schema version of the devicefit.v1 wire contract, carried in every message's ``schema_version``.

"MAJOR.MINOR": a MINOR bump only adds optional fields (old readers ignore them); a MAJOR bump changes
meaning, and a receiver rejects a message of another MAJOR with a clear error instead of misreading it.
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = "1.0"
SCHEMA_MAJOR = int(SCHEMA_VERSION.split(".")[0])


def schema_problem(version: str) -> str | None:
    """None when ``version`` is compatible with this side's schema, else a one-line problem statement."""
    if not version:
        return f"message has no schema_version (this side speaks devicefit.v1 schema {SCHEMA_VERSION})"
    head = version.split(".")[0]
    if not head.isdigit():
        return f"schema_version {version!r} is not MAJOR.MINOR"
    if int(head) != SCHEMA_MAJOR:
        return f"schema_version {version} of the peer is incompatible with this side's {SCHEMA_VERSION} (major differs)"
    return None


SCHEMA_FIX = "install the same devicefit major version on the host and the device (pip install -U 'devicefit[agent]')"


def stamp(msg: Any) -> Any:
    """Set ``schema_version`` on ``msg`` and on every nested message field that is set; returns ``msg``."""
    msg.schema_version = SCHEMA_VERSION
    for field, value in msg.ListFields():
        if field.message_type is None or field.message_type.GetOptions().map_entry:
            continue
        if field.is_repeated:
            for item in value:
                stamp(item)
        else:
            stamp(value)
    return msg

"""Artifact signatures: ed25519 over a manifest's canonical bytes (every field but the signature itself).

The signed bytes bind the content (sha256, size, format) and the claims (model id, version, metrics, plan), so a
changed byte of either is refused by an agent started with ``--trust KEY.pub``. Needs ``cryptography`` (in the
``agent`` extra); imported lazily so the rest of the wire contract does not.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from devicefit.protos.errors import UserInputError
from devicefit.protos.manifest import Manifest


def signed_bytes(m: Manifest) -> bytes:
    """The canonical bytes a manifest's signature covers."""
    d = m.to_dict()
    d.pop("signature", None)
    d.pop("signature_key_id", None)
    return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def key_id(public_key: Any) -> str:
    """16 hex digits naming an ed25519 public key (sha256 of its raw bytes)."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(path: str | Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise UserInputError(f"signing key {str(path)!r} is unreadable: {exc}", "make one with `devicefit keys init`") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise UserInputError(f"signing key {str(path)!r} is not an ed25519 key", "make one with `devicefit keys init`")
    return key


def load_public_key(path: str | Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise UserInputError(f"trusted key {str(path)!r} is unreadable: {exc}", "pass the .pub file `devicefit keys init` wrote") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise UserInputError(f"trusted key {str(path)!r} is not an ed25519 public key", "pass a `devicefit keys init` .pub")
    return key


def sign_manifest(m: Manifest, private_key: Any) -> Manifest:
    """``m`` with its ed25519 signature and key id set."""
    return m.with_(signature=private_key.sign(signed_bytes(m)), signature_key_id=key_id(private_key.public_key()))


def version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key of a version string: dot-separated parts, numeric parts compared as numbers ("10" > "9")."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in version.split("."))

"""The agent's trust in artifacts: ed25519 fleet keys (``--trust KEY.pub``) and replay protection.

With a :class:`Ed25519Verifier` on the store, an upload whose manifest is unsigned, signed by an unknown key, or
whose signature does not cover exactly these bytes (protos/signing.py) is refused with SIGNATURE_INVALID before it
enters the store; and activating a version older than the newest one activated for that model id is refused with
REPLAYED unless the request is an explicit rollback.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devicefit.protos import errors as E
from devicefit.protos.errors import AgentError
from devicefit.protos.manifest import Manifest
from devicefit.protos.signing import key_id, load_public_key, signed_bytes

_FIX = "sign the artifact with the fleet key (`devicefit keys sign ARTIFACT_DIR --key fleet.key`) and deploy its directory"


class Ed25519Verifier:
    """Checks manifests against a set of trusted ed25519 public keys."""

    def __init__(self, keys: Sequence[Any]) -> None:
        if not keys:
            raise ValueError("a verifier needs at least one trusted key")
        self.keys = {key_id(k): k for k in keys}

    @classmethod
    def from_files(cls, paths: Sequence[str | Path]) -> Ed25519Verifier:
        return cls([load_public_key(p) for p in paths])

    def verify(self, manifest: Manifest, digest: bytes) -> None:
        """Raise AgentError(SIGNATURE_INVALID) unless ``manifest`` is signed by a trusted key over these bytes."""
        from cryptography.exceptions import InvalidSignature

        name = f"artifact {manifest.model_id} {manifest.version} ({manifest.sha256[:12]})"
        if digest.hex() != manifest.sha256:
            raise AgentError(E.SIGNATURE_INVALID, f"{name}: the received bytes are not the ones the manifest names")
        if not manifest.signature:
            raise AgentError(E.SIGNATURE_INVALID, f"{name} is unsigned; this agent only accepts signed artifacts", _FIX)
        candidates = [self.keys[manifest.signature_key_id]] if manifest.signature_key_id in self.keys else []
        if not candidates:
            raise AgentError(
                E.SIGNATURE_INVALID, f"{name} is signed by key {manifest.signature_key_id[:32]!r}, which this agent does "
                f"not trust (trusted: {sorted(self.keys)})", _FIX,
            )
        try:
            candidates[0].verify(manifest.signature, signed_bytes(manifest))
        except InvalidSignature:
            raise AgentError(E.SIGNATURE_INVALID, f"{name}: the signature does not match the manifest", _FIX) from None

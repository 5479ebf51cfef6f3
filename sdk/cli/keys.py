"""CLI: ``devicefit keys init`` (an ed25519 fleet key pair) and ``devicefit keys sign ARTIFACT`` (sign a manifest).

Agents started with ``--trust fleet.pub`` accept only artifacts whose manifest this key signed.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from devicefit.cli import emit
from devicefit.errors import UserInputError


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    keys = subparsers.add_parser("keys", parents=[common], help="fleet signing keys: init, sign")
    sub = keys.add_subparsers(dest="keys_command", metavar="COMMAND", parser_class=type(keys))
    init = sub.add_parser("init", parents=[common], help="create an ed25519 key pair (NAME.key, NAME.pub)")
    init.add_argument("--dir", default="~/.devicefit/keys", help="where to write the keys (default ~/.devicefit/keys)")
    init.add_argument("--name", default="fleet", help="file name stem (default fleet)")
    init.add_argument("--force", action="store_true", help="overwrite an existing key pair")
    init.set_defaults(func=_init)
    sign = sub.add_parser("sign", parents=[common], help="sign an artifact's manifest.json with a private key")
    sign.add_argument("artifact", metavar="ARTIFACT", help="artifact directory or its manifest.json")
    sign.add_argument("--key", default="~/.devicefit/keys/fleet.key", help="private key (default ~/.devicefit/keys/fleet.key)")
    sign.add_argument("--version", default=None, help="set the artifact version before signing (e.g. 7)")
    sign.set_defaults(func=_sign)
    keys.set_defaults(func=lambda args: (keys.print_help(), 2)[1])


def init_keys(directory: str | Path, name: str = "fleet", *, force: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` (PKCS#8 PEM, mode 0600) and ``NAME.pub`` under ``directory``; returns both paths."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    d = Path(directory).expanduser()
    d.mkdir(parents=True, exist_ok=True)
    priv, pub = d / f"{name}.key", d / f"{name}.pub"
    if not force and (priv.exists() or pub.exists()):
        raise UserInputError(f"key {priv} already exists", "pass --force to replace it (agents trusting it will refuse new artifacts)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def sign_artifact(where: str | Path, key_path: str | Path, *, version: str | None = None) -> Any:
    """Sign the artifact at ``where`` (directory or manifest.json) in place; returns the signed Artifact."""
    from devicefit.artifact import MANIFEST_NAME, Artifact
    from devicefit.protos.signing import load_private_key, sign_manifest

    art = Artifact.load(where)
    m = art.manifest if version is None else art.manifest.with_(version=str(version))
    signed = Artifact(art.path, sign_manifest(m, load_private_key(Path(key_path).expanduser())))
    target = Path(where)
    signed.save(target if target.is_file() else target / MANIFEST_NAME)
    return signed


def _init(args: argparse.Namespace) -> int:
    from devicefit.protos.signing import key_id, load_public_key

    priv, pub = init_keys(args.dir, args.name, force=args.force)
    out = {"private_key": str(priv), "public_key": str(pub), "key_id": key_id(load_public_key(pub))}
    emit(args, out, lambda o: f"wrote {o['private_key']} (keep it secret) and {o['public_key']} (key id {o['key_id']});"
         f" start agents with --trust {o['public_key']}")
    return 0


def _sign(args: argparse.Namespace) -> int:
    art = sign_artifact(args.artifact, args.key, version=args.version)
    out = {"artifact": str(art.path), "model_id": art.manifest.model_id, "version": art.manifest.version,
           "key_id": art.manifest.signature_key_id}
    emit(args, out, lambda o: f"signed {o['model_id']} version {o['version']} with key {o['key_id']}")
    return 0
